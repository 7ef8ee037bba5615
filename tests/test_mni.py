import json

import numpy as np
import pytest
import torch

from privbench import config
from privbench.errors import PrivbenchError
from privbench.metrics import ms_ssim3d
from privbench.registry import create_task
from privbench.tasks import mni


def small(tmp_path, **changes) -> config.RunConfig:
    cfg = config.resolve("test", {f"task.{k}": v for k, v in changes.items()})
    cfg.task.cache_dir = str(tmp_path)
    return cfg


def test_shapes_classes_and_csf_derivation():
    template = mni.load_template(4.0)
    assert tuple(template.brain.shape) == (36, 48, 40)
    assert tuple(mni.load_template(2.0).brain.shape) == (72, 96, 80)
    csf = template.brain - template.gm - template.wm
    # CSF is what the brain mask holds beyond GM and WM: a few percent of the brain, the ventricles in it
    assert 0.02 < csf.clamp(min=0).sum() / template.brain.sum() < 0.25
    assert template.ventricle_centre[0] == pytest.approx(17.5, abs=2)  # on the midline


def test_full_resolution_matches_the_paper_size():
    assert tuple(mni.load_template(1.0).brain.shape) == (144, 192, 160)


def test_cohort_is_deterministic_and_seed_dependent(tmp_path):
    a = create_task("mni-tissue", cfg=small(tmp_path / "a"))
    b = create_task("mni-tissue", cfg=small(tmp_path / "b"))
    c = create_task("mni-tissue", cfg=small(tmp_path / "c", cohort_seed=1))
    scan_a, scan_b, scan_c = a.scans("train")[0], b.scans("train")[0], c.scans("train")[0]
    image_a, label_a = a.load(scan_a)
    image_b, label_b = b.load(scan_b)
    assert torch.equal(image_a, image_b) and torch.equal(label_a, label_b)
    assert image_a.shape == (1, 36, 48, 40) and label_a.dtype == torch.int64
    assert 0 <= image_a.min() and image_a.max() <= 1
    assert set(label_a.unique().tolist()) == {0, 1, 2, 3}
    assert not torch.equal(c.load(scan_c)[0], image_a)


def test_roles_are_subject_disjoint(tmp_path):
    task = create_task("mni-tissue", cfg=small(tmp_path, n_subjects=20, max_test_scans=0,
                                               reference_subjects=3))
    train, test, ref, public = (set(task.subjects(r)) for r in ("train", "test", "reference", "public"))
    assert len(train | test | public) == 20
    assert not train & test and not public & (train | test)
    assert ref <= train and len(ref) == 3
    assert len(test) == 5 and len(public) == 4
    per_subject = {}
    for scan in task.scans("train") + task.scans("test") + task.scans("public"):
        per_subject[scan.subject] = per_subject.get(scan.subject, 0) + 1
    assert set(per_subject.values()) <= {2, 3}  # test preset: 2-3 scans per subject


def test_cache_is_reused_and_validated(tmp_path):
    cfg = small(tmp_path)
    folder = mni.build_cohort(cfg.task)
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    create_task("mni-tissue", cfg=cfg)
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp  # not regenerated
    assert not list(folder.parent.glob("*.tmp-*"))  # nothing half-written left behind
    manifest = json.loads((folder / "manifest.json").read_text())
    victim = folder / manifest["scans"][0]["image"]
    victim.write_bytes(victim.read_bytes()[:1000])  # truncate one file
    with pytest.raises(PrivbenchError, match="corrupt cohort cache: .*truncated"):
        create_task("mni-tissue", cfg=cfg)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(PrivbenchError, match="bad manifest"):
        create_task("mni-tissue", cfg=cfg)


def test_unwritable_cache_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PrivbenchError, match="cannot write the cohort cache"):
        create_task("mni-tissue", cfg=small(blocker / "sub"))


def brain_patches(brain: torch.Tensor, n: int, rng: np.random.Generator) -> list[tuple[slice, ...]]:
    out = []
    while len(out) < n:
        corner = [int(rng.integers(0, d - 32)) for d in brain.shape]
        window = tuple(slice(c, c + 32) for c in corner)
        if brain[window].mean() > 0.6:
            out.append(window)
    return out


def test_cohort_is_hard_enough_to_mean_something():
    """DESIGN.md: two scans of one subject far more alike than two subjects, and the population
    mean a poor guess of any one subject (MS-SSIM < 0.8 on 32^3 brain patches)."""
    template = mni.load_template(2.0)
    scans = []
    for s in range(8):
        subject = mni.make_subject(template, np.random.default_rng(100 + s))
        scans.append([torch.from_numpy(mni.make_scan(template, subject, np.random.default_rng(
            [s, c]), follow_up=c == 1)[0]) for c in range(2)])
    mean = torch.stack([pair[0] for pair in scans]).mean(0)
    windows = brain_patches(template.brain, 6, np.random.default_rng(0))

    def score(a, b):
        x = torch.stack([a[w] for w in windows])[:, None]
        y = torch.stack([b[w] for w in windows])[:, None]
        return ms_ssim3d(x, y).mean().item()

    within = np.mean([score(a, b) for a, b in scans])
    between = np.mean([score(scans[i][0], scans[(i + 1) % 8][0]) for i in range(8)])
    population = np.mean([score(mean, pair[1]) for pair in scans])
    assert within > 0.8
    assert between < 0.6
    assert within - between > 0.25
    assert population < 0.8
