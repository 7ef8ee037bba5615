"""separation: a separator of two-source mixtures trained on public scans."""

import pytest
import torch

from privbench import config
from privbench.attacks.base import execute
from privbench.attacks.separation import Separation, SyntheticMixtures, permutation_invariant_l1
from privbench.defenses.mixup import MixupPrivacy
from privbench.defenses.none import NoProxy
from privbench.engine import Batch

from helpers import GALLERY_COHORT, gallery_cohort


def test_synthetic_mixtures_mix_two_scans_with_a_from_the_public_range():
    public = torch.rand(5, 1, 20, 20, 20)
    batch = SyntheticMixtures(public, (0.3, 0.7), patch=8, batch=6, seed=1).batch(3)
    assert batch.image.shape == (6, 1, 8, 8, 8) and batch.label.shape == (6, 2, 8, 8, 8)
    x1, x2, m = batch.label[:, :1], batch.label[:, 1:], batch.image
    a = ((m - x2) * (x1 - x2)).flatten(1).sum(1) / ((x1 - x2) ** 2).flatten(1).sum(1)
    assert torch.all((a > 0.3 - 1e-5) & (a < 0.7 + 1e-5))
    assert torch.allclose(m, a.reshape(-1, 1, 1, 1, 1) * x1 + (1 - a.reshape(-1, 1, 1, 1, 1)) * x2, atol=1e-5)


def test_the_loss_does_not_care_which_output_holds_which_source():
    sources = torch.rand(3, 2, 4, 4, 4)
    batch = Batch(sources.mean(1, keepdim=True), sources, [])
    assert permutation_invariant_l1(sources, batch) == 0 and permutation_invariant_l1(sources.flip(1), batch) == 0
    assert permutation_invariant_l1(torch.zeros_like(sources), batch) > 0


@pytest.fixture(scope="module")
def cohort(cache_dir):
    """The attacks' gallery cohort (tests/helpers.py)."""
    return gallery_cohort(cache_dir, **{"attack.separation.iterations": 80, "attack.separation.lr": 3e-3})


def test_unmixed_requests_are_linked_through_the_separated_sources(cohort, tmp_path):
    cfg, task = cohort
    result = execute(Separation(), NoProxy(), task, cfg, run_dir=tmp_path)
    assert result.metrics["linkage_top1"] == 1.0 and result.metrics["mixture_linkage_top1"] == 1.0
    assert result.settings["a_range"] == [0.5, 0.5]  # "none" describes no mixing: the attacker assumes halves
    assert len(list(tmp_path.glob("attackers/separation-*/separation_net.pt"))) == 1 and (tmp_path / "separation_roc.png").exists()


def test_mixtures_are_scored_against_the_oracle_that_knows_the_key(cohort, tmp_path):
    _, task = cohort
    cfg = config.resolve("test", {**GALLERY_COHORT, "attack.separation.iterations": 3})  # scoring, not skill
    mixup = MixupPrivacy()
    mixup.attach(task, cfg)
    result = execute(Separation(), mixup, task, cfg, run_dir=tmp_path)
    rows = {row["guess"]: row for row in result.table}
    assert rows["oracle knowing the reference"]["msssim"] > 0.99  # the key undoes the mixture exactly
    assert result.settings["a_range"] == [cfg.mixup.eval_a_min, cfg.mixup.eval_a_max]
    assert 0 < result.metrics["msssim"] <= 1 and result.metrics["mixture_msssim"] < 1
    assert result.metrics["template_msssim"] < rows["oracle knowing the reference"]["msssim"]
