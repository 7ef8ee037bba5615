
import json
import shutil

import pytest
import torch

from privbench import config
from privbench.attacks import bss
from privbench.attacks.base import execute
from privbench.metrics import ms_ssim3d
from privbench.mixing import mix


def test_separation_lands_on_the_gaussian_posterior_mean():
    """Both sources ~ N(mu, v) per voxel; given m = a*x1 + (1-a)*x2 exactly, the posterior mean
    is E[x1|m] = mu + a*(m - mu)/(a^2 + b^2), E[x2|m] = mu + b*(m - mu)/(a^2 + b^2), b = 1 - a."""
    mu, var, a, m_value = 0.2, 0.5, 0.3, 0.6
    b = 1 - a
    score = lambda x, sigma: -(x - mu) / (var + sigma**2)  # noqa: E731  (exact score of N(mu, var+sigma^2))
    mixture = torch.full((256, 1, 4, 4, 2), m_value, dtype=torch.float64)
    sigmas = bss.noise_levels(5.0, 0.01, 30).double()
    x1, x2 = bss.separate(mixture, a, score, sigmas, 20, 5e-5, generator=torch.Generator().manual_seed(0))
    expected1 = mu + a * (m_value - mu) / (a**2 + b**2)
    expected2 = mu + b * (m_value - mu) / (a**2 + b**2)
    sd1 = (var * b**2 / (a**2 + b**2)) ** 0.5  # posterior spread of x1 (along the constraint)
    standard_error = sd1 / x1.numel() ** 0.5
    assert abs(float(x1.mean()) - expected1) < 5 * standard_error + 0.01
    assert abs(float(x2.mean()) - expected2) < 5 * standard_error * a / b + 0.01
    residual = mixture - a * x1 - b * x2  # the constraint holds sample by sample, within gamma_L = 0.01
    assert float(residual.pow(2).mean().sqrt()) < 0.03
    assert float(x1.std()) > 0.3 * sd1  # samples, not a collapse onto one point


def test_noise_levels_and_largest_distance():
    levels = bss.noise_levels(10.0, 0.01, 4)
    assert torch.allclose(levels, torch.tensor([10.0, 1.0, 0.1, 0.01]), rtol=1e-5)
    patches = torch.zeros(3, 1, 2, 2, 2)
    patches[1] += 1.0
    assert bss.largest_distance(patches) == pytest.approx(8**0.5)


def test_the_separation_sees_only_mixtures_and_weights(mixup_client, tmp_path, monkeypatch):
    cfg, task, defense = mixup_client
    calls, truths = [], []

    def spy(mixture, alpha, score, sigmas, *args, **kwargs):
        calls.append((mixture, alpha))
        return mixture, mixture

    attack = bss.BlindSourceSeparation()
    real_score = attack.score
    monkeypatch.setattr(bss, "separate", spy)
    monkeypatch.setattr(attack, "score", lambda g, truth, o, r: truths.append(truth) or real_score(g, truth, o, r))
    result = execute(attack, defense, task, cfg, run_dir=tmp_path)
    (truth,) = truths
    mixtures, targets = torch.stack(calls[0][0].cpu().unbind()), torch.stack(truth.images)
    references, alphas = torch.stack(truth.extra["references"]), torch.tensor(truth.weights)
    assert torch.allclose(mixtures, mix(targets, references, alphas))  # what it saw is what was sent
    assert torch.equal(calls[0][1].cpu(), alphas.float())  # and the weights it was granted
    assert len(calls) == 1 + cfg.attack.bss.n_inits
    # returning the mixture as both sources scores exactly the "mixture as guess" baseline
    assert result.metrics["msssim"] == pytest.approx(result.metrics["mixture_msssim"])
    assert result.metrics["oracle_msssim"] == pytest.approx(1.0, abs=1e-4)
    # the template guess is the public mean at each patch's place
    mean = torch.stack([task.load(s)[0] for s in task.scans("public")]).mean(0)
    windows = truth.extra["windows"]
    expected = ms_ssim3d(torch.stack([mean[w] for w in windows]), targets, data_range=1.0).mean()
    assert result.metrics["template_msssim"] == pytest.approx(float(expected), abs=1e-5)


def test_bss_in_a_full_run_and_not_applicable_to_none(trained_run):
    """The session's test-preset runs (every attack on every defense): bss's card entry,
    attacker checkpoint and figure on mixup, and its refusal on none."""
    mixup = trained_run("mixup")
    (entry,) = [e for e in mixup.card.attacks if e["attack"] == "bss"]
    assert entry["status"] == "done" and entry["settings"]["n_patches"] == 2
    assert 0 <= entry["metrics"]["msssim"] <= 1 and entry["metrics"]["oracle_msssim"] > 0.99
    assert [row["guess"] for row in entry["table"]] == [
        "bss (Langevin separation)", "mixture as guess", "public mean as guess", "oracle knowing the reference"]
    assert len(list(mixup.run_dir.glob(f"attackers/bss-*/{bss.CHECKPOINT}"))) == 1
    assert (mixup.run_dir / bss.FIGURE).exists()
    (entry,) = [e for e in trained_run("none").card.attacks if e["attack"] == "bss"]
    assert entry["status"] == "not applicable" and "not none" in entry["reason"]


def test_one_run_holds_bss_at_several_budgets_on_the_same_requests(trained_run, tmp_path):
    """``privbench attack --set attack.bss.iterations=N`` adds an entry labelled with its budget,
    beside the default one, with its files in its own folder; the calibration rows are those of
    the same requests."""
    from typer.testing import CliRunner

    from privbench.cli import app

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run("mixup").run_dir, run_dir)
    cli = CliRunner()
    for iterations in (2, 4, 4):  # the second 4 replaces the first
        result = cli.invoke(app, ["attack", str(run_dir), "-a", "bss", "--set", f"attack.bss.iterations={iterations}",
                                  "-q"])
        assert result.exit_code == 0, result.output
    card = json.loads((run_dir / "card.json").read_text())
    entries = [e for e in card["attacks"] if e["attack"] == "bss"]
    assert [e["label"] for e in entries] == ["bss", "bss@iterations=2", "bss@iterations=4"]
    assert [e["settings"]["score_iterations"] for e in entries] == [3, 2, 4]
    assert entries[2]["overrides"] == {"attack.bss.iterations": 4}
    mixture = [next(r for r in e["table"] if r["guess"] == "mixture as guess") for e in entries]
    assert mixture[0] == mixture[1] == mixture[2]  # the same requests, scored the same way
    assert (run_dir / entries[2]["files"]["figure"]).is_file() and entries[2]["files"]["figure"].startswith(
        "attacks/bss@iterations=4/")
    assert card["config"]["attack"]["bss"]["iterations"] == 3  # the run's own setting is unchanged

    result = cli.invoke(app, ["attack", str(run_dir), "-a", "bss", "--set", "train.lr=0.1"])
    assert result.exit_code == 2
    assert "only the named attacks' own settings can change here (attack.bss.*)" in result.stderr


def test_the_score_model_starts_from_the_attackers_own_seed_not_the_global_state(mixup_client, tmp_path):
    """Whatever the process's global random state (the run seed's, under the harness), bss
    starts from the same weights and so recovers the same sources."""
    cfg, task, defense = mixup_client
    metrics = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        metrics.append(execute(bss.BlindSourceSeparation(), defense, task, cfg, run_dir=tmp_path / str(global_seed),
                               secret=5).metrics)  # the same victims' keys
    assert metrics[0] == metrics[1]


def test_the_a_curve_draws_fresh_keys_at_each_level(mixup_client, tmp_path, monkeypatch):
    """One attacker sees each test scan at every level of the a-curve: were its reference the
    same at a = 0.3 and 0.7, two equations would give the scan back. Each level draws its own."""
    from privbench.attacks.linkage import Linkage
    from privbench.defenses.mixup import curve

    _, task, defense = mixup_client
    cfg = config.resolve("test", {"mixup.curve_a": (0.3, 0.7), "mixup.curve_scans": 1}, defense="mixup",
                         attacks=("linkage",))
    attack, seen = Linkage(), []
    monkeypatch.setattr(curve, "variant_dice", lambda *args: {  # untrained networks: no Dice to measure here
        f"dice_{v}": 0.5 for v in ("naive", "naive+tta", "learned", "learned+tta")})
    real_score = attack.score
    monkeypatch.setattr(attack, "score", lambda g, truth, o, r: seen.append((o.requests, truth)) or real_score(g, truth, o, r))
    curve.utility_privacy_curve(defense, task, cfg, [attack], run_dir=tmp_path, progress=False, secret=7)
    (low, low_truth), (high, high_truth) = seen
    assert len(low_truth.images) >= 2
    for i, target in enumerate(low_truth.images):
        j = next(j for j, other in enumerate(high_truth.images) if torch.equal(other, target))  # the same scan
        solved = (0.3 * low[i] - 0.7 * high[j]) / (0.3 * 0.3 - 0.7 * 0.7)  # x, were the reference shared
        assert float((solved - target).abs().max()) > 0.05
