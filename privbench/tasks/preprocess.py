"""Checked reading, preprocessing and caching of a user's local scans (PPMI, BraTS).

Each scan (an image file and a label file, NIfTI or FreeSurfer MGZ) goes through:

1. **checks**, each failing with a :class:`BadScan` that names the file and the problem: the
   file must be readable and complete, 3D, finite; the label must match the image's shape and
   affine, hold only the values the task's label table knows, and lie inside the image's
   nonzero region (an all-zero image is refused);
2. **preprocessing** with MONAI: reorientation to RAS, resampling to ``spacing`` mm when the
   voxels are not that size already (image linear, label nearest), cropping to the image's
   nonzero box, centred crop or pad to the task's shape, labels mapped to class indices, image
   scaled so that the 0.5th and 99.5th percentiles of its nonzero voxels become 0 and 1
   (clipped);
3. **caching** as uncompressed NIfTI (memory-mappable) in a folder keyed by the two source files
   (path, size, modification time) and every preprocessing setting, so a second run starts at
   once and a changed file or setting makes a new entry. Each entry is written into a
   temporary folder renamed into place, so a failure never leaves half an entry behind.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, CropForegroundd, Orientationd, ResizeWithPadOrCropd, Spacingd

from privbench.errors import PrivbenchError
from privbench.tasks.cache import CACHE_FORMAT, atomic_folder, file_records, first_damaged

PREPROCESS_VERSION = 1  # bump when the preprocessed volumes change
PERCENTILES = (0.5, 99.5)


class BadScan(PrivbenchError):
    """A scan that cannot be used: the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class Settings:
    """Everything preprocessing depends on (part of the cache key)."""

    spacing: float  # mm, isotropic
    shape: tuple[int, ...]  # voxels after crop or pad
    labels: tuple[tuple[int, int], ...]  # (value in the file, class index) pairs


def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 3D volume's voxels (float32) and affine; unreadable, truncated, non-3D or non-finite
    files raise :class:`BadScan`."""
    if not path.is_file():
        raise BadScan(f"{path}: file not found")
    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        raise BadScan(f"{path}: cannot read it (truncated or corrupt?): {exc}") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise BadScan(f"{path}: expected a 3D volume, got shape {data.shape}")
    bad = int((~np.isfinite(data)).sum())
    if bad:
        raise BadScan(f"{path}: {bad} NaN or infinite voxels")
    affine = np.asarray(image.affine, dtype=np.float64)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all(np.isfinite(affine)) or np.any(zooms <= 0):
        raise BadScan(f"{path}: invalid affine (voxel sizes {zooms.round(3).tolist()})")
    return data, affine


def map_labels(values: np.ndarray, table: dict[int, int], path: Path) -> np.ndarray:
    """Label values -> class indices through ``table``; any other value raises :class:`BadScan`."""
    found = np.unique(values)
    unknown = [v for v in found.tolist() if v != int(v) or int(v) not in table]
    if unknown:
        shown = ", ".join(f"{v:g}" for v in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise BadScan(f"{path}: unexpected label values {shown} (expected {', '.join(map(str, sorted(table)))})")
    lookup = np.zeros(int(found.max()) + 1, dtype=np.uint8)
    for value, index in table.items():
        if value < len(lookup):
            lookup[value] = index
    return lookup[values.astype(np.int64)]


def check_label_inside(image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path) -> None:
    """The image must hold signal, and every labelled voxel must lie inside the box of its
    positive voxels (the box the crop keeps): otherwise the crop would silently drop labels."""
    inside = image > 0
    if not inside.any():
        raise BadScan(f"{image_path}: the image has no positive voxel (all zeros?)")
    box = []
    for axis in range(3):
        hits = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    labelled = int(np.count_nonzero(label))
    kept = int(np.count_nonzero(label[tuple(box)]))
    if kept < labelled:
        raise BadScan(f"{label_path}: {labelled - kept} labelled voxels lie outside the image's nonzero "
                      f"region ({image_path}): image and label do not belong together")


def preprocess(image_path: Path, label_path: Path, settings: Settings) -> tuple[MetaTensor, MetaTensor]:
    """Check and preprocess one scan: image ``[D,H,W]`` float32 in [0, 1] and label uint8 class
    indices, as MONAI MetaTensors carrying the output affine."""
    image, affine = read(image_path)
    label, label_affine = read(label_path)
    if label.shape != image.shape:
        raise BadScan(f"{label_path}: shape {label.shape} does not match the image's {image.shape} ({image_path})")
    if not np.allclose(label_affine, affine, atol=1e-3):
        raise BadScan(f"{label_path}: affine does not match the image's ({image_path})")
    label = map_labels(label, dict(settings.labels), label_path)
    check_label_inside(image, label, image_path, label_path)
    data = {"image": MetaTensor(torch.from_numpy(image)[None], affine=torch.from_numpy(affine)),
            "label": MetaTensor(torch.from_numpy(label.astype(np.float32))[None], affine=torch.from_numpy(affine))}
    steps = [Orientationd(keys=["image", "label"], axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))]
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.allclose(zooms, settings.spacing, atol=1e-3):
        steps.append(Spacingd(keys=["image", "label"], pixdim=settings.spacing, mode=("bilinear", "nearest"),
                              dtype=np.float32))
    steps += [CropForegroundd(keys=["image", "label"], source_key="image", allow_smaller=True),
              ResizeWithPadOrCropd(keys=["image", "label"], spatial_size=settings.shape)]
    out = Compose(steps)(data)
    image, label = out["image"][0], out["label"][0]
    return _scale(image), label.round().to(torch.uint8)


def _scale(image: torch.Tensor) -> torch.Tensor:
    """Robust [0, 1] scaling by the nonzero voxels' percentiles (:data:`PERCENTILES`)."""
    values = image[image != 0]
    if values.numel() < 2:
        return image.clamp(0, 1)
    lo, hi = np.percentile(values.numpy(), PERCENTILES)
    return ((image - float(lo)) / max(float(hi - lo), 1e-6)).clamp(0, 1)


def _identity(path: Path) -> dict[str, object]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def entry_dir(root: Path, image_path: Path, label_path: Path, settings: Settings) -> Path:
    """The cache folder of one scan, keyed by both files' identity and the settings."""
    try:
        key = {"version": PREPROCESS_VERSION, "format": CACHE_FORMAT, "image": _identity(image_path),
               "label": _identity(label_path),
               "spacing": settings.spacing, "shape": list(settings.shape), "labels": list(settings.labels)}
    except OSError as exc:
        raise BadScan(f"{exc.filename}: file not found") from exc
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return root / digest


def cached(root: Path, image_path: Path, label_path: Path, settings: Settings) -> tuple[Path, Path]:
    """The preprocessed image and label files of one scan, made (atomically) unless cached."""
    folder = entry_dir(root, image_path, label_path, settings)
    files = (folder / "image.nii", folder / "label.nii")
    if _complete(folder):
        return files
    image, label = preprocess(image_path, label_path, settings)
    affine = image.affine.numpy()
    with atomic_folder(folder, "preprocessing cache", complete=_complete) as tmp:
        nib.save(nib.Nifti1Image(image.numpy().astype(np.float32), affine), tmp / "image.nii")
        nib.save(nib.Nifti1Image(label.numpy(), affine), tmp / "label.nii")
        entry = {"image": str(image_path), "label": str(label_path), "files": file_records(tmp)}
        (tmp / "entry.json").write_text(json.dumps(entry))
    return files


def _complete(folder: Path) -> bool:
    try:
        records = json.loads((folder / "entry.json").read_text())["files"]
        return first_damaged(folder, records) is None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
