"""inversion: a white-box attacker undoes an encoding with the weights the server holds."""

import copy

import pytest
import torch

from privbench import config
from privbench.attacks.base import PublicPool, execute
from privbench.attacks.inversion import Inversion
from privbench.attacks.learned import AlignedPatches
from privbench.defenses.base import Defense, WhiteBox

from helpers import gallery_cohort


class Inverted(WhiteBox):
    """An invertible, keyless encoding: a fixed monotone contrast map (inverted intensities)."""

    deterministic = True

    def encode(self, volumes, generator):
        return 1 - volumes.clamp(0, 1)


class ContrastDefense(Defense):
    """A client that sends 1 - x (and says nothing else about the scan)."""

    name = "none"  # described to the attacker as the keyless scheme; only its white box differs

    def fit(self, task, cfg, *, device, progress=True, workdir=None):
        raise AssertionError("nothing to train")

    def encode(self, image, key):
        return Inverted().encode(image, None)

    def server(self, proxy):
        return proxy

    def decode(self, server_output, key):
        return server_output

    def white_box(self):
        return Inverted()


@pytest.fixture(scope="module")
def cohort(cache_dir):
    """The attacks' gallery cohort (tests/helpers.py)."""
    return gallery_cohort(cache_dir, **{"attack.inversion.iterations": 80, "attack.inversion.lr": 3e-3})


def test_an_invertible_encoding_is_undone_and_its_requests_linked(cohort, tmp_path):
    cfg, task = cohort
    result = execute(Inversion(), ContrastDefense(), task, cfg, run_dir=tmp_path)
    m = result.metrics
    assert m["msssim"] > 0.9 and m["msssim"] > m["request_msssim"] and m["msssim"] > m["template_msssim"]
    assert m["decoded_top1"] == 1.0 and m["matched_top1"] == 1.0 and m["top1"] == 1.0
    assert m["plain_top1"] < 0.5  # linking the inverted requests to clean scans fails, as for privacy-net
    assert m["auc"] > 0.95 and m["tpr_at_1pct_fpr"] >= m["tpr_at_0_fpr"]
    assert result.settings["keys_per_scan"] == 1 and result.settings["decoder_iterations"] == 80
    assert [row["guess"] for row in result.table][:3] == [
        "decoded requests vs the clean gallery", "requests vs the gallery through the encoder",
        "requests vs the clean gallery (the linkage attack)"]
    assert (tmp_path / "inversion_scores.csv").exists() and len(list(tmp_path.glob("attackers/inversion-*/inversion_decoder.pt"))) == 1


def test_aligned_patches_are_co_located_and_reproducible():
    clean = torch.rand(3, 1, 20, 22, 24)
    sampler = AlignedPatches(clean ** 2, clean, patch=8, batch=5, seed=7)
    batch = sampler.batch(4)
    assert batch.image.shape == (5, 1, 8, 8, 8) and batch.label.shape == (5, 1, 8, 8, 8)
    assert torch.equal(batch.image, batch.label ** 2)  # the encoded patch of the very same voxels
    assert torch.equal(sampler.batch(4).image, batch.image) and not torch.equal(sampler.batch(5).image, batch.image)


def test_a_defense_without_weights_is_refused(cohort, tmp_path):
    from privbench.defenses.none import NoProxy

    cfg, task = cohort
    with pytest.raises(Exception, match="needs the encoding's weights"):
        execute(Inversion(), NoProxy(), task, cfg, run_dir=tmp_path)
    assert PublicPool(task).images().shape[0] == len(task.scans("public"))


def test_a_finished_decoder_is_reused_only_by_the_same_attacker(cohort, tmp_path):
    cfg, task = cohort
    short = copy.deepcopy(cfg)
    config.set_value(short, "attack.inversion.iterations", 4)
    first = execute(Inversion(), ContrastDefense(), task, short, run_dir=tmp_path)
    [decoder] = tmp_path.glob("attackers/inversion-*/inversion_decoder.pt")
    written = decoder.stat().st_mtime_ns
    again = execute(Inversion(), ContrastDefense(), task, short, run_dir=tmp_path)  # reads the finished decoder
    assert again.metrics == first.metrics and decoder.stat().st_mtime_ns == written
    assert len(list(tmp_path.glob("attackers/inversion-*"))) == 1
    longer = copy.deepcopy(short)
    config.set_value(longer, "attack.inversion.iterations", 6)
    changed = execute(Inversion(), ContrastDefense(), task, longer, run_dir=tmp_path)  # a new decoder, not the old
    assert changed.settings["decoder_iterations"] == 6 and len(list(tmp_path.glob("attackers/inversion-*"))) == 2
