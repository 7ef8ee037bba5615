"""The ppmi and brats2021 loaders on small NIfTI / MGZ copies written here, broken ones included."""

import gzip

import nibabel as nib
import numpy as np
import pytest
import torch

from privbench import config
from privbench.errors import PrivbenchError
from privbench.registry import create_task
from privbench.runner import check_requirements
from privbench.tasks import ppmi

LPS_4MM = np.diag([-4.0, -4.0, 4.0, 1.0])  # voxel axes pointing left, posterior, superior
SHAPE = (20, 24, 16)


def volume(rng, kind="dseg", marker=(5, 6, 7)):
    """A brain-like block: image intensities 100-300, labels CSF/GM/WM in slabs, and one
    marker voxel block of CSF at ``marker`` (to follow through reorientation)."""
    image = np.zeros(SHAPE, np.float32)
    label = np.zeros(SHAPE, np.int16)
    image[3:17, 3:21, 2:14] = 200 + 10 * rng.standard_normal((14, 18, 12))
    label[3:17, 3:21, 2:14] = 3  # WM
    label[3:17, 3:21, 2:5] = 2  # GM slab at the bottom
    i, j, k = marker
    label[i:i + 2, j:j + 2, k:k + 2] = 1  # CSF block
    image[label == 1] = 60
    if kind == "aseg":
        label = np.select([label == 1, label == 2, label == 3], [4, 3, 2], 0).astype(np.int16)
        label[3:17, 3:21, 13] = np.where(label[3:17, 3:21, 13] == 2, 251, label[3:17, 3:21, 13])  # corpus callosum
        label[10, 10, 3] = 17  # hippocampus -> GM
    return image, label


def save(path, data, affine=LPS_4MM):
    path.parent.mkdir(parents=True, exist_ok=True)
    cls = nib.MGHImage if path.name.endswith(".mgz") else nib.Nifti1Image
    nib.save(cls(data.astype(np.float32 if data.dtype.kind == "f" else np.int32), affine), str(path))
    return path


def ppmi_copy(root, n_subjects=6, sessions=2, kind="dseg", seed=0):
    rng = np.random.default_rng(seed)
    for s in range(n_subjects):
        for v in range(sessions):
            folder = root / f"{1000 + s}" / ("BL" if v == 0 else f"V{v:02d}")
            image, label = volume(rng, kind)
            save(folder / f"sub-{1000 + s}_T1w.nii.gz", image)
            save(folder / ("aseg.mgz" if kind == "aseg" else f"sub-{1000 + s}_dseg.nii.gz"), label)
    return root


def brats_copy(root, n_subjects=6, seed=0):
    rng = np.random.default_rng(seed)
    for s in range(n_subjects):
        name = f"BraTS2021_{s:05d}"
        image, label = volume(rng)
        tumor = np.select([label == 1, label == 2, label == 3], [1, 2, 4], 0)
        save(root / name / f"{name}_t1ce.nii.gz", image, np.diag([4.0, 4.0, 4.0, 1.0]))
        t2 = np.where(image > 0, 400 - image, 0).astype(np.float32)  # another contrast: CSF bright
        save(root / name / f"{name}_t2.nii.gz", t2, np.diag([4.0, 4.0, 4.0, 1.0]))
        save(root / name / f"{name}_seg.nii.gz", tumor, np.diag([4.0, 4.0, 4.0, 1.0]))
    return root


def cfg_for(task, root, tmp_path, **task_changes):
    changes = {"task.name": task, "task.root": str(root), "task.cache_dir": str(tmp_path / "cache"),
               **{f"task.{k}": v for k, v in task_changes.items()}}
    return config.resolve("test", changes)


def world(affine, mask):
    """The world coordinates (mm) of a mask's centroid."""
    return (affine @ np.r_[np.argwhere(mask).mean(0), 1])[:3]


def test_ppmi_dseg_is_reoriented_padded_and_scaled(tmp_path):
    root = ppmi_copy(tmp_path / "ppmi")
    task = create_task("ppmi", cfg=cfg_for("ppmi", root, tmp_path))
    scan = task.scans("train")[0]
    out = nib.load(str(scan.image))
    image, label = task.load(scan)
    assert image.shape == (1, 36, 48, 40) and label.shape == (36, 48, 40)  # 144x192x160 mm at 4 mm
    assert np.allclose(np.diag(out.affine)[:3], 4.0)  # RAS, 4 mm
    assert set(label.unique().tolist()) == {0, 1, 2, 3}
    assert 0 <= image.min() and image.max() == pytest.approx(1.0)
    source = root / scan.subject / scan.session / f"sub-{scan.subject}_dseg.nii.gz"
    src_label = np.asarray(nib.load(str(source)).dataobj)
    # the CSF marker sits at the same place in the world after reorientation and padding
    assert np.allclose(world(LPS_4MM, src_label == 1), world(out.affine, label.numpy() == 1), atol=1e-3)
    # and a voxel axis flipped: the marker near the input's first i index is now near the last
    assert np.argwhere(label.numpy() == 1)[:, 0].mean() > 18
    assert image[0][label == 1].mean() < image[0][label == 3].mean()  # CSF darker than WM


def test_aseg_mgz_is_mapped_to_tissue(tmp_path):
    root = ppmi_copy(tmp_path / "ppmi", kind="aseg")
    task = create_task("ppmi", cfg=cfg_for("ppmi", root, tmp_path))
    scan = task.scans("train")[0]
    label = task.load(scan)[1].numpy()
    src = np.asarray(nib.load(str(root / scan.subject / scan.session / "aseg.mgz")).dataobj)
    counts = {c: int((label == c).sum()) for c in range(4)}
    assert counts[1] == (src == 4).sum()  # lateral ventricle -> CSF
    assert counts[2] == np.isin(src, [3, 17]).sum()  # cortex, hippocampus -> GM
    assert counts[3] == np.isin(src, [2, 251]).sum()  # white matter, corpus callosum -> WM
    assert ppmi.ASEG_TISSUE[4] == 1 and ppmi.ASEG_TISSUE[42] == 2 and ppmi.ASEG_TISSUE[41] == 3


def test_resampling_to_the_task_spacing(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "ppmi"
    for s in range(4):
        image, label = volume(rng)
        affine = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm voxels: resampled to the task's 4 mm
        save(root / f"s{s}" / "BL" / "T1w.nii.gz", image, affine)
        save(root / f"s{s}" / "BL" / "dseg.nii.gz", label, affine)
    task = create_task("ppmi", cfg=cfg_for("ppmi", root, tmp_path))
    scan = task.scans("train")[0]
    out = nib.load(str(scan.label))
    assert out.shape == (36, 48, 40) and np.allclose(out.header.get_zooms(), 4.0)
    label = np.asarray(out.dataobj)
    assert (label == 3).sum() == pytest.approx(14 * 18 * 9 / 8, rel=0.25)  # WM volume kept (mm^3 / 64)


def test_seeded_split_is_subject_disjoint_and_a_split_file_is_obeyed(tmp_path):
    root = ppmi_copy(tmp_path / "ppmi", n_subjects=8)
    task = create_task("ppmi", cfg=cfg_for("ppmi", root, tmp_path, max_test_scans=0))
    train, test, public = (set(task.subjects(r)) for r in ("train", "test", "public"))
    assert len(train | test | public) == 8 and not train & test and not public & (train | test)
    assert task.repeated_subjects("test")  # sessions of one subject stay together
    again = create_task("ppmi", cfg=cfg_for("ppmi", root, tmp_path, max_test_scans=0))
    assert again.subjects("test") == task.subjects("test")
    split = tmp_path / "split.csv"
    split.write_text("subject,role\n1000,test\n1001,public\n1002,train\n1003,train\n1004,train\n")
    task = create_task("ppmi", cfg=cfg_for("ppmi", root, tmp_path, split_file=str(split), max_test_scans=0))
    assert task.subjects("test") == ["1000"] and task.subjects("public") == ["1001"]
    assert task.subjects("train") == ["1002", "1003", "1004"] and task.subjects("reference") == ["1002", "1003"]
    assert len(task.scans("test")) == 2
    split.write_text("subject,role\n1000,validation\n")
    with pytest.raises(PrivbenchError, match="unknown roles"):
        create_task("ppmi", cfg=cfg_for("ppmi", root, tmp_path, split_file=str(split)))
    split.write_text("subject,role\n9999,test\n1000,train\n")
    with pytest.raises(PrivbenchError, match="subjects without usable scans: \\['9999'\\]"):
        create_task("ppmi", cfg=cfg_for("ppmi", root, tmp_path, split_file=str(split)))


def test_cache_hit_and_invalidation(tmp_path):
    root = ppmi_copy(tmp_path / "ppmi", n_subjects=4)
    cfg = cfg_for("ppmi", root, tmp_path)
    task = create_task("ppmi", cfg=cfg)
    first = {s.subject + s.session: s.image for role in ("train", "test", "public") for s in task.scans(role)}
    stamps = {k: p.stat().st_mtime_ns for k, p in first.items()}
    again = create_task("ppmi", cfg=cfg)
    for scan in again.scans("train"):  # hit: the same files, not rewritten
        assert scan.image == first[scan.subject + scan.session]
        assert scan.image.stat().st_mtime_ns == stamps[scan.subject + scan.session]
    changed = root / "1000" / "BL" / "sub-1000_T1w.nii.gz"
    image, _ = volume(np.random.default_rng(5))
    save(changed, image * 2)  # a changed source file: a new entry for that scan only
    after = create_task("ppmi", cfg=cfg)
    paths = {s.subject + s.session: s.image for role in ("train", "test", "public") for s in after.scans(role)}
    assert paths["1000BL"] != first["1000BL"] and paths["1000V01"] == first["1000V01"]
    other = create_task("ppmi", cfg=cfg_for("ppmi", root, tmp_path, spacing=2.0))  # a changed setting
    assert not set(s.image for s in other.scans("train")) & set(first.values())
    assert nib.load(str(other.scans("train")[0].image)).shape == (72, 96, 80)


def _label_outside():
    """The label of a good scan plus a 2x2x2 block of WM where the image is zero."""
    label = volume(np.random.default_rng(0))[1]
    label[:2, :2, :2] = 3
    return label


BROKEN = {
    "missing image": (lambda f: (f / "sub-1000_T1w.nii.gz").unlink(), "no T1 image"),
    "missing label": (lambda f: (f / "sub-1000_dseg.nii.gz").unlink(), "no label file"),
    "shape mismatch": (lambda f: save(f / "sub-1000_dseg.nii.gz", np.zeros((20, 24, 15), np.int16)),
                       r"sub-1000_dseg.nii.gz: shape \(20, 24, 15\) does not match the image's \(20, 24, 16\)"),
    "affine mismatch": (lambda f: save(f / "sub-1000_dseg.nii.gz", volume(np.random.default_rng(0))[1],
                                       np.diag([4.0, 4.0, 4.0, 1.0])), "sub-1000_dseg.nii.gz: affine does not match"),
    "label values": (lambda f: save(f / "sub-1000_dseg.nii.gz", np.full(SHAPE, 7, np.int16)),
                     "sub-1000_dseg.nii.gz: unexpected label values 7 \\(expected 0, 1, 2, 3\\)"),
    "nan voxels": (lambda f: save(f / "sub-1000_T1w.nii.gz", np.full(SHAPE, np.nan, np.float32)),
                   "sub-1000_T1w.nii.gz: 7680 NaN or infinite voxels"),
    "all-zero image": (lambda f: save(f / "sub-1000_T1w.nii.gz", np.zeros(SHAPE, np.float32)),
                       "sub-1000_T1w.nii.gz: the image has no positive voxel"),
    "label outside the image": (lambda f: save(f / "sub-1000_dseg.nii.gz", _label_outside()),
                                "sub-1000_dseg.nii.gz: 8 labelled voxels lie outside the image's nonzero region"),
    "not 3d": (lambda f: save(f / "sub-1000_T1w.nii.gz", np.zeros((*SHAPE, 2), np.float32)),
               r"sub-1000_T1w.nii.gz: expected a 3D volume, got shape \(20, 24, 16, 2\)"),
    "truncated": (lambda f: (f / "sub-1000_T1w.nii.gz").write_bytes((f / "sub-1000_T1w.nii.gz").read_bytes()[:2000]),
                  "sub-1000_T1w.nii.gz: cannot read it"),
    "not gzip": (lambda f: (f / "sub-1000_T1w.nii.gz").write_bytes(gzip.compress(b"garbage" * 100)),
                 "sub-1000_T1w.nii.gz: cannot read it"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_bad_scans_are_named_or_skipped(tmp_path, case):
    root = ppmi_copy(tmp_path / "ppmi", n_subjects=4)
    breaker, message = BROKEN[case]
    breaker(root / "1000" / "BL")
    with pytest.raises(PrivbenchError, match=f"bad scan \\(1000 BL\\): .*{message}.*on_bad_scan=skip"):
        create_task("ppmi", cfg=cfg_for("ppmi", root, tmp_path))
    cache = tmp_path / "cache" / "ppmi"
    assert not list(cache.glob("*.tmp-*"))  # nothing half-written
    task = create_task("ppmi", cfg=cfg_for("ppmi", root, tmp_path, on_bad_scan="skip"))
    skipped = task.summary()["skipped_scans"]
    assert [(s["subject"], s["session"]) for s in skipped] == [("1000", "BL")]
    assert len(task.scans("train") + task.scans("test") + task.scans("public")) >= 7 - 2  # test capped at 2
    assert sum(1 for p in cache.iterdir()) == 7  # every good scan cached, the bad one not


def test_missing_root_or_empty_copy_is_one_clear_error(tmp_path):
    with pytest.raises(PrivbenchError, match="--set task.root="):
        create_task("ppmi", cfg=config.resolve("test", {"task.name": "ppmi"}))
    with pytest.raises(PrivbenchError, match="is not a folder"):
        create_task("brats2021", cfg=cfg_for("brats2021", tmp_path / "nowhere", tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrivbenchError, match="no scans found"):
        create_task("brats2021", cfg=cfg_for("brats2021", tmp_path / "empty", tmp_path))


def test_brats_labels_modality_and_one_scan_per_subject(tmp_path):
    root = brats_copy(tmp_path / "brats")
    cfg = cfg_for("brats2021", root, tmp_path, spacing=4.0)
    task = create_task("brats2021", cfg=cfg)
    assert task.class_names == ("background", "NCR", "ED", "ET")
    scan = task.scans("train")[0]
    image, label = task.load(scan)
    assert label.shape == (60, 60, 39)  # 240x240x155 mm at 4 mm
    src = np.asarray(nib.load(str(root / scan.subject / f"{scan.subject}_seg.nii.gz")).dataobj)
    assert set(np.unique(src)) == {0, 1, 2, 4} and set(label.unique().tolist()) == {0, 1, 2, 3}
    assert task.repeated_subjects("train") == []
    cfg.defense = "privacy-net"
    with pytest.raises(PrivbenchError, match="defense 'privacy-net' needs two or more scans per subject"):
        check_requirements(task, cfg)
    cfg.defense, cfg.attacks = "mixup", ("reid",)
    with pytest.raises(PrivbenchError, match="attack 'reid' needs two or more scans per subject"):
        check_requirements(task, cfg)
    cfg.attacks = ()
    check_requirements(task, cfg)  # mixup trains on single scans
    t2 = create_task("brats2021", cfg=cfg_for("brats2021", root, tmp_path, spacing=4.0, modality="t2"))
    t2_image, t2_label = t2.load(t2.scans("train")[0])
    assert torch.equal(t2_label, label)  # same labels, the other modality's contrast:
    assert t2_image[0][label == 1].mean() > t2_image[0][label == 3].mean()  # CSF brighter than WM on T2
    assert image[0][label == 1].mean() < image[0][label == 3].mean()
    (root / "BraTS2021_00003" / "BraTS2021_00003_seg.nii.gz").unlink()
    with pytest.raises(PrivbenchError, match="BraTS2021_00003_seg.nii.gz: file not found"):
        create_task("brats2021", cfg=cfg)


def test_a_brats_run_end_to_end_lists_skipped_scans_in_its_card(tmp_path):
    import json

    from typer.testing import CliRunner

    from privbench.cli import app

    root = brats_copy(tmp_path / "brats", n_subjects=7)
    victim = root / "BraTS2021_00004" / "BraTS2021_00004_t1ce.nii.gz"
    victim.write_bytes(victim.read_bytes()[:500])  # truncated
    args = ["run", "--task", "brats2021", "--defense", "mixup", "--preset", "test", "--quiet",
            "--set", f"task.root={root}", "--set", f"task.cache_dir={tmp_path / 'cache'}",
            "--set", "task.spacing=4", "--set", "task.reference_subjects=3", "--out", str(tmp_path / "runs")]
    failed = CliRunner().invoke(app, args)
    assert failed.exit_code == 2 and "BraTS2021_00004_t1ce.nii.gz: cannot read it" in failed.stderr
    assert not (tmp_path / "runs").exists()  # stopped before the run folder was made
    result = CliRunner().invoke(app, [*args, "--set", "task.on_bad_scan=skip"])
    assert result.exit_code == 0, result.output
    (card_path,) = (tmp_path / "runs").glob("brats2021/mixup/*/card.json")
    card = json.loads(card_path.read_text())
    assert [s["subject"] for s in card["data"]["skipped_scans"]] == ["BraTS2021_00004"]
    assert card["data"]["classes"] == ["background", "NCR", "ED", "ET"]
    assert {"NCR", "ED", "ET"} <= set(card["utility"][0]["dice"])


def test_a_failure_while_caching_leaves_nothing_half_written(tmp_path, monkeypatch):
    from privbench.tasks import preprocess

    root = ppmi_copy(tmp_path / "ppmi", n_subjects=4)
    real_save, calls = nib.save, []

    def failing_save(image, path):
        calls.append(path)
        if len(calls) == 3:  # the second scan's image: its entry is half written when this fails
            raise KeyboardInterrupt
        real_save(image, path)

    monkeypatch.setattr(preprocess.nib, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        create_task("ppmi", cfg=cfg_for("ppmi", root, tmp_path))
    entries = list((tmp_path / "cache" / "ppmi").iterdir())
    assert len(entries) == 1 and (entries[0] / "entry.json").is_file()  # the first scan only, complete
    monkeypatch.setattr(preprocess.nib, "save", real_save)
    task = create_task("ppmi", cfg=cfg_for("ppmi", root, tmp_path))  # picks up where it stopped
    assert len(list((tmp_path / "cache" / "ppmi").iterdir())) == 8 and task.scans("train")


def test_a_cache_entry_whose_content_changed_is_rebuilt(tmp_path):
    root = ppmi_copy(tmp_path / "ppmi", n_subjects=4)
    cfg = cfg_for("ppmi", root, tmp_path)
    scan = create_task("ppmi", cfg=cfg).scans("train")[0]
    good = scan.image.read_bytes()
    damaged = bytearray(good)
    damaged[1000:5000] = b"\xff" * 4000  # NaN voxels, same size
    scan.image.write_bytes(bytes(damaged))
    again = create_task("ppmi", cfg=cfg).scans("train")[0]
    assert again.image == scan.image and again.image.read_bytes() == good
