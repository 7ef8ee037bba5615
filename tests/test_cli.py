import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from privbench.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache_dir):
    """One tiny end-to-end run through the CLI, shared by the tests below."""
    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVBENCH_CACHE", str(cache_dir))
        result = invoke("run", "--preset", "test", "--defense", "none", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    (card_path,) = out.glob("mni-tissue/none/*/card.json")
    return out, card_path, result


def test_run_writes_a_complete_card(finished_run):
    out, card_path, result = finished_run
    card = json.loads(card_path.read_text())
    run_dir = card_path.parent
    assert card["task"] == "mni-tissue" and card["defense"] == "none" and card["seed"] == 0
    assert card["config"]["train"]["iterations"] == 3 and len(card["config_hash"]) == 12
    assert json.loads((run_dir / "config.json").read_text())["config_hash"] == card["config_hash"]
    assert "git_commit" in card["code"] and card["code"]["privbench"]
    assert card["libraries"]["torch"] and card["libraries"]["monai"] and card["device"]["type"] == "cpu"
    timings = card["timings"]
    assert timings["train_seconds"] > 0 and timings["train_it_per_s"] > 0
    assert timings["infer_seconds_per_volume"] > 0 and timings["train_iterations"] == 3
    (utility,) = card["utility"]
    assert set(utility["dice"]) == {"CSF", "GM", "WM", "mean"}
    assert all(0 <= v <= 1 for v in utility["dice"].values())
    per_scan = pd.read_csv(run_dir / card["files"]["per_scan"])
    assert len(per_scan) == utility["n_scans"] == card["data"]["test_scans"] == 2
    assert utility["dice"]["GM"] == pytest.approx(per_scan["GM"].mean())
    assert (run_dir / "checkpoint.pt").stat().st_size > 0
    assert "card written" in (run_dir / "run.log").read_text()
    assert "Dice mean" in result.stdout and str(card_path) in result.stdout.replace("\n", "")


def test_leaderboard_collects_cards_and_warns_on_broken_ones(finished_run, tmp_path):
    out, card_path, _ = finished_run
    broken = out / "mni-tissue" / "none" / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "card.json").write_text("{half a card")
    csv = tmp_path / "board.csv"
    result = invoke("leaderboard", out, "-o", csv)
    assert result.exit_code == 0, result.output
    assert "skipped" in result.stderr and "broken" in result.stderr
    table = pd.read_csv(csv, keep_default_na=False)
    card = json.loads(card_path.read_text())
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["task"], row["defense"], row["variant"], row["attack"]) == ("mni-tissue", "none", "default", "")
    assert row["config_hash"] == card["config_hash"] and row["seed"] == 0
    assert row["dice_mean"] == pytest.approx(card["utility"][0]["dice"]["mean"])
    assert row["train_it_per_s"] == pytest.approx(card["timings"]["train_it_per_s"])
    assert "| mni-tissue | none | default |" in csv.with_suffix(".md").read_text()
    compact = tmp_path / "compact.csv"
    assert invoke("leaderboard", out, "-o", compact, "--columns", "dice_mean, dice_GM").exit_code == 0
    assert list(pd.read_csv(compact).columns) == ["task", "defense", "variant", "attack", "seed", "preset",
                                                  "dice_mean", "dice_GM"]
    result = invoke("leaderboard", out, "-o", compact, "--columns", "dice_mean,reid_f2")
    assert result.exit_code == 2 and "no column 'reid_f2'" in result.stderr and "dice_GM" in result.stderr


def test_resume_continues_an_unfinished_run(finished_run, cache_dir):
    out, card_path, _ = finished_run
    card_path.unlink()  # as if the run had died after its last checkpoint
    result = invoke("run", "--preset", "test", "--out", out, "--resume", "--quiet")
    assert result.exit_code == 0, result.output
    card = json.loads(card_path.read_text())
    assert card["timings"]["train_resumed_from"] == 3


def test_list_prints_registered_components():
    result = invoke("list", "defenses")
    assert result.exit_code == 0 and "none" in result.stdout and "Baseline" in result.stdout
    assert "mni-tissue" in invoke("list", "tasks", "mni-*").stdout


@pytest.mark.parametrize("args, message", [
    (["run", "--defense", "nonee"], "did you mean 'none'?"),
    (["run", "--task", "mni-tisue"], "did you mean 'mni-tissue' or 'mni-tumor'?"),
    (["run", "--set", "train.iters=3"], "unknown config key 'train.iters'"),
    (["run", "--set", "train.lr=fast"], "bad value for train.lr"),
    (["run", "--preset", "huge"], "unknown preset 'huge'"),
    (["list", "models"], "choose tasks, defenses or attacks"),
    (["run", "--task", "ppmi"], "point privbench at it with --set task.root="),
    (["run", "--task", "brats2021", "--set", "task.root=/no/such/copy"], "task.root /no/such/copy is not a folder"),
    (["leaderboard", "/no/such/folder"], "no such folder"),
])
def test_user_errors_are_one_line_and_exit_2(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = invoke("run", "--preset", "test", "--out", blocker / "runs")
    assert result.exit_code == 2 and "cannot create the run folder" in result.stderr
    result = invoke("run", "--preset", "test", "--out", tmp_path, "--resume")
    assert result.exit_code == 2 and "nothing to resume" in result.stderr


def test_corrupt_cache_is_reported_not_raised(tmp_path):
    cache = tmp_path / "cache"
    args = ["run", "--preset", "test", "--set", f"task.cache_dir={cache}", "--set", "train.iterations=0",
            "--out", tmp_path / "runs", "-q"]
    assert invoke(*args).exit_code == 0
    (manifest,) = cache.glob("mni-tissue/*/manifest.json")
    manifest.write_text("garbage")
    result = invoke(*args)
    assert result.exit_code == 2 and "corrupt cohort cache" in result.stderr


def test_debug_shows_the_exception():
    result = runner.invoke(app, ["--debug", "run", "--defense", "nonee"])
    assert result.exit_code != 2 and "did you mean" in str(result.exception)
