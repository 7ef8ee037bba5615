"""The embedded BraTS-like tumor cohort, and the foreground-oversampling patch sampler it uses."""

import numpy as np
import pytest
import torch

from privbench import config, engine
from privbench.registry import create_task


def tumor_task(**changes):
    return create_task("mni-tumor", cfg=config.resolve("test", {"task.name": "mni-tumor", **changes}))


def test_classes_contrast_and_determinism():
    task = tumor_task()
    assert task.class_names == ("background", "NCR", "ED", "ET")
    scans = task.scans("train") + task.scans("public")
    images, labels = zip(*(task.load(scan) for scan in scans))
    image, label = torch.cat([i[0].flatten() for i in images]), torch.cat([lb.flatten() for lb in labels])
    assert set(label.unique().tolist()) == {0, 1, 2, 3}
    brain = torch.cat([task.load(s)[0][0].flatten() for s in scans]) > 0.1
    healthy = image[(label == 0) & brain].median()
    assert image[label == 3].median() > healthy + 0.1  # enhancing rim brighter than healthy tissue
    assert image[label == 1].median() < image[label == 3].median() - 0.2  # necrosis dark
    assert image[label == 2].median() < image[label == 3].median()
    again = tumor_task()
    assert torch.equal(again.load(again.scans("train")[0])[1], labels[0])


def test_one_tumor_per_subject_kept_across_its_scans():
    task = tumor_task()
    centres: dict[str, list[np.ndarray]] = {}
    for scan in task.scans("train") + task.scans("public"):
        tumor = task.load(scan)[1].numpy() > 0
        assert tumor.sum() > 0
        centres.setdefault(scan.subject, []).append(np.argwhere(tumor).mean(0))
    within = [np.linalg.norm(c[0] - c[1]) for c in centres.values() if len(c) > 1]
    firsts = [c[0] for c in centres.values()]
    between = [np.linalg.norm(a - b) for i, a in enumerate(firsts) for b in firsts[i + 1:]]
    assert max(within) < 2.0  # voxels (4 mm): rigid jitter only
    assert np.median(between) > 4 * max(within)  # tumors sit in different places


def test_task_defaults_oversample_the_foreground():
    assert config.resolve("quick", {"task.name": "mni-tumor"}).train.foreground_fraction == 0.33
    assert config.resolve("quick").train.foreground_fraction == 0.0
    assert config.resolve("paper", {"task.name": "brats2021"}).train.patch_size == 64
    user = config.resolve("quick", {"task.name": "mni-tumor", "train.foreground_fraction": 0.5})
    assert user.train.foreground_fraction == 0.5  # the user's --set wins over the task's default


def test_foreground_patches_contain_foreground():
    task = tumor_task()
    always = engine.PatchSampler(task, 16, 8, seed=0, foreground=1.0)
    never = engine.PatchSampler(task, 16, 8, seed=0)
    hits = [(always.batch(i).label > 0).flatten(1).any(1).float().mean() for i in range(5)]
    base = [(never.batch(i).label > 0).flatten(1).any(1).float().mean() for i in range(5)]
    assert min(hits) == 1.0 and np.mean(base) < 0.9
    assert torch.equal(always.batch(3).image, always.batch(3).image)  # batch i depends on i only


def test_identity_pairs_oversample_the_foreground_too():
    from privbench.identity import PairSampler

    task = tumor_task()
    pairs = PairSampler(task, 16, 8, seed=0, foreground=1.0).batch(0)
    assert (pairs.first_label > 0).flatten(1).any(1).all()


@pytest.mark.parametrize("defense", ["none", "mixup"])  # the default evaluation and mixup's own study
def test_a_tumor_evaluation_reports_the_brats_regions(defense, tmp_path):
    from privbench.registry import create_defense

    cfg = config.resolve("test", {"task.name": "mni-tumor"}, defense=defense)
    task = create_task("mni-tumor", cfg=cfg)
    model = create_defense(defense)
    torch.manual_seed(0)
    model.setup(task, cfg, torch.device("cpu"))  # untrained: the scoring is under test, not the skill
    evaluation = model.evaluate(task, cfg, run_dir=tmp_path)
    for entry in evaluation.utility:
        assert set(entry["regions"]) == {"WT", "TC", "ET"}
        assert all(0 <= r["dice"] <= 1 and 0 <= r["hd95"] <= 400 for r in entry["regions"].values())
    first, per_scan = evaluation.utility[0], evaluation.per_scan
    rows = per_scan[per_scan.variant == first["variant"]]
    assert first["regions"]["WT"]["hd95"] == pytest.approx(rows["WT_hd95"].mean())
    assert first["regions"]["TC"]["dice"] == pytest.approx(rows["TC_dice"].mean())
