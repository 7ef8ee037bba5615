"""Privacy-Net and Deformation-Proxy: protocol, invertible deformations, training, CLI runs."""

import json

import pandas as pd
import pytest
import torch
from scipy import ndimage
from typer.testing import CliRunner

from privbench import collapse, config
from privbench.cli import app
from privbench.defenses.deformation import DeformationKey, DeformationProxy
from privbench.defenses.privacy_net import PrivacyNet
from privbench.identity import PairSampler
from privbench.registry import create_task

ADVERSARIAL = {"privacy-net": PrivacyNet, "deformation": DeformationProxy}


def built(name, cfg, task):
    torch.manual_seed(0)
    defense = ADVERSARIAL[name]()
    defense.setup(task, cfg, torch.device("cpu"))
    return defense


@pytest.fixture(scope="module")
def cohort(cache_dir):
    """The test cohort (4 mm) in float32, and one of its test scans ``[1,1,D,H,W]``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVBENCH_CACHE", str(cache_dir))
        cfg = config.resolve("test", {"train.amp": False})
        task = create_task(cfg.task.name, cfg=cfg)
    image, label = task.load(task.scans("test")[0])
    return cfg, task, image[None], label


@pytest.fixture(scope="module")
def deformation(cohort):
    """A deformation client whose free generator (no set size) makes fields of a realistic size
    (trained ones grow towards the bound): about 1 voxel on average at 4 mm, up to the 8 mm (2
    voxel) bound."""
    _, task, _, _ = cohort
    defense = built("deformation", config.resolve("test", {"train.amp": False, "deformation.displacement_mm": 0}), task)
    with torch.no_grad():
        torch.nn.init.normal_(defense.encoder.body[-1].weight, std=2.0, generator=torch.Generator().manual_seed(0))
    return defense


def test_deformation_is_smooth_invertible_and_keyed(cohort, deformation):
    _, _, image, label = cohort
    size = tuple(image.shape[2:])
    key = deformation.new_key(torch.Generator().manual_seed(0))
    forward, inverse = deformation.displacement(key, size), deformation.displacement(key, size, inverse=True)
    assert 1.5 < float(forward.abs().max()) <= deformation.encoder.max_velocity == 2.0  # voxels
    assert float(forward.norm(dim=1).mean()) > 0.8
    # the inverse undoes the deformation: x -> x + inverse(x) -> + forward(there) is ~ x
    # (measured: 0.07 voxels on average, 0.32 at the 99th percentile)
    error = (inverse + deformation.encoder.warp(forward, inverse)).norm(dim=1)
    assert float(error.mean()) < 0.1 and float(error.quantile(0.99)) < 0.4
    # a smooth scan comes back within a fraction of the scans' noise (std 0.01-0.03; measured
    # 0.0065, the deformed scan being 0.03 away from it)
    smooth = torch.from_numpy(ndimage.gaussian_filter(image[0, 0].numpy(), 1.5))[None, None]
    brain = label[None, None] > 0
    proxy = deformation.encode(smooth, key)
    assert float((proxy - smooth)[brain].abs().mean()) > 0.02
    assert float((deformation.decode(proxy, key) - smooth)[brain].abs().mean()) < 0.008
    # the key alone fixes the deformation; another key gives another one
    assert torch.equal(deformation.encode(image, key), deformation.encode(image, DeformationKey(key.seed)))
    other = deformation.encode(image, deformation.new_key(torch.Generator().manual_seed(1)))
    assert float((other - deformation.encode(image, key)).abs().mean()) > 0.01


@pytest.mark.parametrize("silenced", ["output", "noise"])
def test_zero_field_is_exactly_inverted(cohort, silenced):
    """A generator whose output is zero, or one that ignores the noise (so the same field for
    every key: a uniform one, a mere translation, which the generator's centring removes),
    leaves the scan as it is, exactly."""
    cfg, task, image, _ = cohort
    defense = built("deformation", cfg, task)
    with torch.no_grad():
        if silenced == "output":
            defense.encoder.body[-1].weight.zero_()
            defense.encoder.body[-1].bias.zero_()
        else:
            defense.encoder.body[0].weight.zero_()
    key = defense.new_key(torch.Generator().manual_seed(3))
    proxy = defense.encode(image, key)
    assert torch.allclose(proxy, image, atol=1e-6)
    assert torch.allclose(defense.decode(proxy, key), image, atol=1e-6)


@pytest.mark.parametrize("displacement_mm, collapsed", [(0.0, True), (4.0, False)])
def test_a_shrunken_generator_is_collapsed_unless_its_size_is_set(cohort, displacement_mm, collapsed):
    """A generator whose output weights shrank 100-fold (what the segmentation loss does to a
    free field once the discriminator is at chance) moves nothing and its run is named
    collapsed; with the field's size set (the default, 4 mm RMS) it still deforms by about that."""
    cfg, task, _, _ = cohort
    cfg = config.resolve("test", {"train.amp": False, "deformation.displacement_mm": displacement_mm})
    defense = built("deformation", cfg, task)
    with torch.no_grad():
        defense.encoder.body[-1].weight.mul_(1e-2)
        defense.encoder.body[-1].bias.mul_(1e-2)
    noise = torch.randn(3, defense.encoder.noise_channels, 5, 6, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        control = defense.encoder.velocity(noise, (17, 21, 17))[..., ::4, ::4, ::4]  # the control points
    rms = control.pow(2).sum(1).mean(dim=(1, 2, 3)).sqrt()  # voxels, one per field
    images = [task.load(scan)[0] for scan in task.scans("test")]
    section, line = collapse.section(defense, images, seed=0)
    if collapsed:
        assert float(rms.max()) < 0.02 and section["verdict"] == "collapsed" and "COLLAPSED" in line
        assert section["request_msssim"] > 0.99 and section["displacement_mm_mean"] < 0.1
    else:
        # 4 mm at 4 mm spacing, less where a peak is clamped to the 8 mm bound (measured 0.987-1.000)
        assert float(rms.min()) > 0.97 and float(rms.max()) < 1 + 1e-5
        assert section["verdict"] == "encodes" and section["request_msssim"] < 0.985  # measured 0.984
        # measured over the brain: 1.9 mm on average, 3.7 mm at the 95th percentile
        assert 1.5 < section["displacement_mm_mean"] < section["displacement_mm_p95"] < 8.0


def test_validation_records_the_encoding_and_the_held_out_discriminator(cohort, tmp_path):
    """progress.csv holds, at each validation, the request-to-scan MS-SSIM, the deformation's
    size and the discriminator's accuracy on held-out encoded pairs; every logged interval the
    discriminator's accuracy on its training pairs."""
    _, task, _, _ = cohort
    cfg = config.resolve("test", {"train.amp": False, "train.iterations": 2, "train.validate_every": 1},
                         defense="deformation")
    built("deformation", cfg, task).fit(task, cfg, device=torch.device("cpu"), progress=False, workdir=tmp_path)
    curve = pd.read_csv(tmp_path / "progress.csv")
    assert list(curve["iteration"]) == [1, 2]
    for column in ("val_request_msssim", "val_displacement_mm_mean", "val_displacement_mm_p95", "val_disc_acc"):
        assert curve[column].notna().all(), column
    assert curve["val_request_msssim"].between(0, 0.99).all() and curve["val_disc_acc"].between(0, 1).all()
    assert curve["disc_acc"].between(0, 1).all()


def test_decoded_probabilities_stay_probabilities(cohort, deformation):
    _, _, image, _ = cohort
    key = deformation.new_key(torch.Generator().manual_seed(0))
    probs = deformation.decode(deformation.server(deformation.encode(image, key)), key)
    assert probs.shape == (1, 4, *image.shape[2:]) and probs.min() >= 0
    assert torch.allclose(probs.sum(1), torch.ones(1), atol=1e-4)


def test_privacy_net_encodes_to_an_image_and_returns_plain_segmentations(cohort):
    cfg, task, image, _ = cohort
    defense = built("privacy-net", cfg, task)
    assert defense.new_key(torch.Generator().manual_seed(0)) is None
    proxy = defense.encode(image, None)
    assert proxy.shape == image.shape and 0 <= proxy.min() and proxy.max() <= 1
    assert not torch.allclose(proxy, image, atol=0.05)
    output = defense.server(proxy)
    assert torch.allclose(output.sum(1), torch.ones(1), atol=1e-4)
    assert defense.decode(output, None) is output


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_training_resumes_exactly_and_moves_every_network(name, cohort, tmp_path):
    """Four iterations straight equal two, a restart, and two more (constant learning rate, so
    the shorter run's schedule is the same); encoder, server and discriminator all learn."""
    cfg, task, _, _ = cohort
    cfg = config.resolve("test", {"train.amp": False, "train.lr_schedule": "constant",
                                  "train.checkpoint_every": 100}, defense=name)
    device = torch.device("cpu")
    straight = built(name, cfg, task)
    initial = {k: {n: p.clone() for n, p in straight.state[k].state_dict().items()}
               for k in ("encoder", "net", "discriminator")}
    cfg.train.iterations = 4
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    report = straight.fit(task, cfg, device=device, progress=False, workdir=tmp_path / "a")
    assert report.iterations == 4 and all(torch.isfinite(torch.tensor(v)) for v in report.last_losses.values())
    for part, weights in initial.items():
        moved = [not torch.equal(w, straight.state[part].state_dict()[n]) for n, w in weights.items()]
        assert any(moved), part
    cfg.train.iterations = 2
    built(name, cfg, task).fit(task, cfg, device=device, progress=False, workdir=tmp_path / "b")
    cfg.train.iterations = 4
    torch.manual_seed(99)  # another initialisation, overwritten by the checkpoint
    resumed = ADVERSARIAL[name]()
    report = resumed.fit(task, cfg, device=device, progress=False, workdir=tmp_path / "b")
    assert report.start_iteration == 2
    for part in initial:
        for (n, a), b in zip(straight.state[part].state_dict().items(), resumed.state[part].state_dict().values()):
            assert torch.equal(a, b), (part, n)


def test_training_patches_are_deformed_with_their_labels(cohort, deformation):
    _, task, _, _ = cohort
    margin = deformation.margin()
    assert margin == 3  # ceil(2 voxels) + 1
    batch = PairSampler(task, 32, 4, seed=0, margin=margin).batch(0)
    assert batch.first.shape == (4, 1, 38, 38, 38)
    images, labels = torch.cat([batch.first, batch.second]), torch.cat([batch.first_label, batch.second_label])
    with torch.no_grad():
        proxies, warped = deformation.encode_patches(images, labels, iteration=0)
        again, _ = deformation.encode_patches(images, labels, iteration=0)
    assert torch.equal(again, proxies)  # the training fields depend on the seed and iteration only
    assert proxies.shape == (8, 1, 32, 32, 32) and warped.shape == (8, 32, 32, 32)
    assert warped.dtype == torch.int64 and set(warped.unique().tolist()) <= {0, 1, 2, 3}
    centre = (slice(None), *(slice(margin, -margin),) * 3)
    image, label = images[:, 0][centre], labels[centre]
    assert float((proxies[:, 0] - image).abs().mean()) > 0.01 and float((warped != label).float().mean()) > 0.1

    def unexplained(volume, tissue):  # mean distance of each voxel to its class's mean intensity
        means = torch.stack([volume[tissue == t].mean() for t in range(4)])
        return float((volume - means[tissue]).abs().mean())

    # the warped labels explain the deformed image about as well as the labels the scan (measured
    # 0.071 against 0.065), and better than the labels left in place (0.084)
    assert unexplained(proxies[:, 0], warped) < 1.15 * unexplained(image, label)
    assert unexplained(proxies[:, 0], label) > 1.1 * unexplained(proxies[:, 0], warped)


runner = CliRunner()


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_end_to_end_through_the_cli(name, tmp_path):
    out = tmp_path / "runs"
    result = runner.invoke(app, ["run", "--preset", "test", "--defense", name, "--attack", "reid",
                                 "--attack", "bss", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    (card_path,) = out.glob(f"mni-tissue/{name}/*/card.json")
    card, run_dir = json.loads(card_path.read_text()), card_path.parent
    (utility,) = card["utility"]
    assert set(utility["dice"]) == {"CSF", "GM", "WM", "mean"} and utility["n_scans"] == 2
    assert all(card["timings"][f"{stage}_ms_per_volume"] > 0 for stage in ("encode", "server", "decode"))
    assert card["config"]["adversary"]["weight"] == config.resolve("test").adversary.weight
    reid, bss = card["attacks"]
    assert reid["status"] == "done" and 0 <= reid["metrics"]["f1"] <= 1
    assert bss["status"] == "not applicable" and name in bss["reason"]
    assert (run_dir / card["files"]["examples_png"]).stat().st_size > 0
    per_scan = pd.read_csv(run_dir / card["files"]["per_scan"])
    assert utility["dice"]["WM"] == pytest.approx(per_scan["WM"].mean())
    assert "Dice mean" in result.stdout and "not applicable" in result.stdout
    encoding = card["encoding"]
    assert encoding["verdict"] == "encodes" and encoding["scans"] == 2 and encoding["request_msssim"] < 0.99
    assert ("displacement_mm_mean" in encoding) == (name == "deformation")


def test_a_field_that_cannot_move_is_a_collapsed_run(tmp_path):
    """Deformation-Proxy with no room to deform sends the scans themselves: the card and the
    summary call the run collapsed."""
    out = tmp_path / "runs"
    result = runner.invoke(app, ["run", "--preset", "test", "--defense", "deformation", "--set",
                                 "deformation.max_velocity_mm=0", "--set", "deformation.displacement_mm=0",
                                 "--set", "adversary.weight=0", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    (card_path,) = out.glob("mni-tissue/deformation/*/card.json")
    encoding = json.loads(card_path.read_text())["encoding"]
    assert encoding["verdict"] == "collapsed" and encoding["request_msssim"] > 0.999
    assert encoding["displacement_mm_mean"] == 0 and "COLLAPSED" in result.stdout


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_a_task_with_one_scan_per_subject_is_refused(name, tmp_path):
    result = runner.invoke(app, ["run", "--preset", "test", "--defense", name, "--set", "task.min_scans=1",
                                 "--set", "task.max_scans=1", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 2 and f"defense '{name}' needs two or more scans per subject" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())  # refused before the run folder was made


def test_lambda_counts_in_the_adversarial_defenses_hash_only():
    def digest(defense, weight):
        return config.config_hash(config.resolve("quick", {"adversary.weight": weight}, defense=defense))

    assert digest("privacy-net", 0.1) != digest("privacy-net", 0.5)
    assert digest("deformation", 0.1) != digest("deformation", 0.5)
    assert digest("none", 0.1) == digest("none", 0.5) and digest("mixup", 0.1) == digest("mixup", 0.5)
