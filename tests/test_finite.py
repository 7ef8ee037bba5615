"""No NaN or infinite number is reported: training, evaluation and attacks stop instead, with
one line, exit code 3, the last good checkpoint kept and no card."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from privbench import card as cards
from privbench import engine, finite, leaderboard, sweep
from privbench.attacks.reid import Reidentification
from privbench.cli import EXIT_NON_FINITE, app
from privbench.config import TrainConfig
from privbench.engine import inference
from privbench.errors import NonFiniteError

cli = CliRunner()


def run_test_preset(out, *extra):
    return cli.invoke(app, ["run", "--preset", "test", "-q", "--out", str(out), *map(str, extra)])


def only_run_dir(out):
    (run_dir,) = [p for p in out.glob("*/*/*") if p.is_dir()]
    return run_dir


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = engine.PatchSampler.batch

    def poisoned(self, iteration):  # the batch of iteration 5 (1-based) carries a NaN voxel
        batch = original(self, iteration)
        if iteration == 4:
            batch.image[0, 0, 0, 0, 0] = float("nan")
        return batch

    monkeypatch.setattr(engine.PatchSampler, "batch", poisoned)
    result = run_test_preset(tmp_path, "--set", "train.iterations=8", "--set", "train.checkpoint_every=2")
    assert result.exit_code == EXIT_NON_FINITE == 3
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in result.output
    assert "none training stopped at iteration 5: non-finite loss loss = nan" in message
    assert "weights of net" in message and "precision float32" in message
    assert "the last good checkpoint (iteration 4) is kept" in message and "no card was written" in message
    run_dir = only_run_dir(tmp_path)
    assert not (run_dir / "card.json").exists()
    assert engine.read_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 4
    state = engine.read_checkpoint(run_dir / "checkpoint.pt")["state"]["net"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert "run failed: none training stopped at iteration 5" in (run_dir / "run.log").read_text()
    assert (run_dir / "config.json").exists()
    stopped = json.loads((run_dir / "stopped.json").read_text())  # marked: not a run in progress
    assert stopped["stopped"] == "non-finite" and stopped["message"] == message.removeprefix("error: ")

    again = run_test_preset(tmp_path, "--set", "train.iterations=8", "--set", "train.checkpoint_every=2",
                            "--resume")
    assert again.exit_code == 2 and "nothing to resume" in again.stderr  # it would stop again
    board = leaderboard.collect(tmp_path)
    assert board.table.empty and board.stopped == [run_dir]
    shown = cli.invoke(app, ["leaderboard", str(tmp_path), "-o", str(tmp_path / "board.csv")])
    assert f"no card in {run_dir}: the run stopped on a non-finite number (see its stopped.json)" in shown.stderr
    grid = sweep.Grid(tasks=["mni-tissue"], defenses=["none"], seeds=[0], preset="test",
                      sets={"train.iterations": 8, "train.checkpoint_every": 2})
    (outcome,) = sweep.run(grid, tmp_path)
    assert outcome.status == "failed" and "stopped on a non-finite number before" in outcome.error
    assert [p for p in tmp_path.glob("*/*/*") if p.is_dir()] == [run_dir]  # not run again


def test_non_finite_weights_are_never_saved(tmp_path):
    net = torch.nn.Linear(2, 2)
    state = {"net": net}
    engine.save_checkpoint(tmp_path, state, 2)

    def step(batch, iteration):  # a finite loss, but the update leaves an infinite weight
        with torch.no_grad():
            net.weight[0, 0] = float("inf")
        return {"loss": 1.0}

    class Sampler:
        def batch(self, iteration):
            return torch.zeros(1)

    cfg = TrainConfig(iterations=4, checkpoint_every=2, amp=False)
    with pytest.raises(NonFiniteError, match="iteration 4: non-finite weights of net .*iteration 2"):
        engine.train(step, Sampler(), cfg, state=state, device=torch.device("cpu"), workdir=tmp_path,
                     progress=False)
    assert engine.read_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 2


def test_a_non_finite_prediction_stops_the_evaluation(tmp_path, monkeypatch):
    original = inference.sliding_window_inference  # MONAI's, as sliding_window_predict looks it up

    def broken(*args, **kwargs):
        out = original(*args, **kwargs)
        out[..., 0] = float("inf")
        return out

    monkeypatch.setattr(inference, "sliding_window_inference", broken)
    result = run_test_preset(tmp_path)
    assert result.exit_code == 3
    assert "evaluation of none stopped: a network's output over whole volumes (precision float32)" in result.stderr
    assert "are NaN or infinite" in result.stderr
    run_dir = only_run_dir(tmp_path)
    assert not (run_dir / "card.json").exists() and (run_dir / "checkpoint.pt").exists()


def test_a_non_finite_attack_score_stops_the_run(tmp_path, monkeypatch):
    original = Reidentification.score

    def nan_score(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        result.metrics["f1"] = float("nan")
        return result

    monkeypatch.setattr(Reidentification, "score", nan_score)
    result = run_test_preset(tmp_path, "--attack", "reid")
    assert result.exit_code == 3 and "attack reid: metrics.f1 is nan" in result.stderr
    assert not (only_run_dir(tmp_path) / "card.json").exists()


@pytest.mark.parametrize("value, path", [
    ({"a": 1.0, "b": [0.5, {"c": math.nan}]}, ("b[1].c", math.nan)),
    ({"utility": [{"dice": {"CSF": 0.4, "GM": -math.inf}}]}, ("utility[0].dice.GM", -math.inf)),
    ({"a": None, "b": "nan", "c": 3, "d": (1.0, 2.0)}, None),
])
def test_first_non_finite_names_the_field(value, path):
    found = finite.first_non_finite(value)
    if path is None:
        assert found is None
    else:
        assert found[0] == path[0] and (found[1] == path[1] or math.isnan(found[1]))


def test_json_with_a_nan_is_never_written(tmp_path):
    target = tmp_path / "card.json"
    target.write_text('{"old": 1}')
    with pytest.raises(NonFiniteError, match=r"timings.lr is inf"):
        cards.write_json_atomic(target, {"timings": {"lr": float("inf")}})
    assert json.loads(target.read_text()) == {"old": 1} and len(list(tmp_path.iterdir())) == 1
