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
                                                  "changes", "dice_mean", "dice_GM"]
    result = invoke("leaderboard", out, "-o", compact, "--columns", "dice_mean,reid_f2")
    assert result.exit_code == 2 and "no column 'reid_f2'" in result.stderr and "dice_GM" in result.stderr


def test_resume_continues_an_unfinished_run(finished_run, cache_dir):
    out, card_path, _ = finished_run
    first = json.loads(card_path.read_text())["timings"]
    card_path.unlink()  # as if the run had died after its last checkpoint
    result = invoke("run", "--preset", "test", "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    timings = json.loads(card_path.read_text())["timings"]
    assert timings["train_resumed_from"] == 3 and timings["train_it_per_s"] is None  # nothing left to train
    assert timings["train_seconds"] == pytest.approx(first["train_seconds"], rel=0.01)  # the first process's time
    assert "resumed after its last iteration" in result.stdout


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


@pytest.mark.parametrize("args, message", [
    (["--set", "train.lr=inf"], "bad value for train.lr: 'inf' is not a valid float (finite)"),
    (["--set", "train.lr=1e308"], "train.lr must be in (0, 1]"),
    (["--seed", "-1"], "seed must be in [0, 4294967295]"),
    (["--seed", "4294967296"], "seed must be in [0, 4294967295]"),
    (["--set", "task.cohort_seed=-1"], "task.cohort_seed must be in [0, 4294967295]"),
    (["--set", "train.patch_size=1024"], "train.patch_size=1024 needs at least"),
    (["--set", "train.batch_size=1000000000"], "train.batch_size=1000000000 with train.patch_size=32 needs"),
    (["--defense", "mixup", "--set", "mixup.tta_max=50"], "mixup.tta_max=50 needs as many reference scans"),
    (["--defense", "mixup", "--attack", "bss", "--set", "task.public_fraction=0"],
     "attack 'bss' needs a public pool of two or more scans; task 'mni-tissue' has 0"),
])
def test_bad_run_inputs_leave_no_run_folder(tmp_path, args, message):
    out = tmp_path / "runs"
    result = invoke("run", "--preset", "test", "-q", "--out", out, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists()


def test_two_default_runs_give_bit_identical_checkpoints(tmp_path):
    """Every stored byte agrees except torch's random per-file serialization id."""
    import zipfile

    for name in ("a", "b"):
        assert invoke("run", "--preset", "test", "-q", "--out", tmp_path / name).exit_code == 0
    members = []
    for name in ("a", "b"):
        (path,) = (tmp_path / name).glob("*/*/*/checkpoint.pt")
        with zipfile.ZipFile(path) as archive:
            members.append({m.split("/", 1)[1]: archive.read(m) for m in archive.namelist()
                            if not m.endswith("serialization_id")})
    assert members[0] == members[1] and len(members[0]) > 10


def test_attack_restores_the_defense_without_writing_it(finished_run, monkeypatch):
    from privbench.engine import training

    run_dir = finished_run[1].parent
    checkpoint = run_dir / "checkpoint.pt"
    before = (checkpoint.read_bytes(), checkpoint.stat().st_mtime_ns, checkpoint.stat().st_ino)
    # train() calls save_checkpoint from its own module: patching the package would miss it
    monkeypatch.setattr(training, "save_checkpoint", lambda *a, **k: pytest.fail("restoring wrote a checkpoint"))
    result = invoke("attack", run_dir, "--attack", "reid", "-q")
    assert result.exit_code == 0, result.output
    assert (checkpoint.read_bytes(), checkpoint.stat().st_mtime_ns, checkpoint.stat().st_ino) == before


class _Payload:
    """An arbitrary object: a checkpoint holding one could run code when unpickled."""


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:3000]), "damaged or truncated checkpoint"),
    (lambda p: p.write_bytes(b""), "damaged or truncated checkpoint"),
    (lambda p: __import__("torch").save({"iteration": 3, "state": {}, "x": _Payload()}, p),
     "refused, it holds objects other than tensors and numbers"),
    (lambda p: __import__("torch").save({"weights": 1}, p), "not a privbench checkpoint"),
])
def test_damaged_or_unsafe_checkpoints_are_named(finished_run, tmp_path, damage, message):
    import shutil

    out = tmp_path / "runs"
    run_dir = out / "mni-tissue" / "none" / finished_run[1].parent.name
    shutil.copytree(finished_run[1].parent, run_dir)
    damage(run_dir / "checkpoint.pt")
    result = invoke("attack", run_dir, "--attack", "reid", "-q")
    assert result.exit_code == 2 and message in result.stderr and "checkpoint.pt" in result.stderr
    (run_dir / "card.json").unlink()  # now an unfinished run for --resume
    result = invoke("run", "--preset", "test", "--out", out, "--resume", "-q")
    assert result.exit_code == 2 and message in result.stderr
    for text in (result.stderr, invoke("attack", run_dir, "--attack", "reid").stderr):
        assert "weights_only" not in text and len(text.strip().splitlines()) == 1


def test_ctrl_c_says_what_can_be_resumed(tmp_path, monkeypatch):
    from privbench import engine, runner as runs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # while the cohort is generated: no run yet
        patch.setattr(runs, "create_task", interrupted)
        result = invoke("run", "--preset", "test", "-q", "--out", tmp_path / "a")
    assert result.exit_code == 130 and "nothing was written" in result.stderr and "--resume" not in result.stderr
    assert not (tmp_path / "a").exists()
    original = engine.PatchSampler.batch
    monkeypatch.setattr(engine.PatchSampler, "batch",
                        lambda self, i: interrupted() if i == 2 else original(self, i))
    result = invoke("run", "--preset", "test", "-q", "--out", tmp_path / "b")  # after the checkpoint at 2
    assert result.exit_code == 130 and "keeps its last checkpoint: continue with the same command and --resume" \
        in result.stderr.replace("\n", "")


def test_one_malformed_card_is_a_warning_not_a_crash(finished_run, tmp_path):
    import shutil

    card = json.loads(finished_run[1].read_text())
    root = tmp_path / "cards"
    shutil.copytree(finished_run[1].parent, root / "good")
    for name, change in (("string-attack", {"attacks": ["reid"]}),
                         ("number-dice", {"utility": [{**card["utility"][0], "dice": 0.5}]})):
        (root / name).mkdir(parents=True)
        (root / name / "card.json").write_text(json.dumps({**card, **change}))
    result = invoke("leaderboard", root, "-o", tmp_path / "board.csv")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("malformed card") == 2 and "string-attack" in result.stderr
    assert len(pd.read_csv(tmp_path / "board.csv")) == 1


def test_two_concurrent_runs_into_one_folder_both_finish(tmp_path, cache_dir):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PRIVBENCH_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}  # one core each
    command = [sys.executable, "-m", "privbench.cli", "run", "--preset", "test", "-q", "--out", str(tmp_path),
               "--set", "train.iterations=1"]
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    for process in runs:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    cards = sorted(tmp_path.glob("mni-tissue/none/*/card.json"))
    assert len(cards) == 2 and len({c.parent.name for c in cards}) == 2
    assert not list(tmp_path.rglob("*.tmp*"))


def test_help_answers_without_importing_torch_or_monai():
    """`privbench --help` and option errors must not wait seconds for the numerical stack."""
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from privbench.cli import app; "
            "r = CliRunner().invoke(app, ['run', '--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('torch', 'monai', 'matplotlib', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_concurrent_attack_processes_on_one_run_each_keep_their_entry(finished_run, tmp_path, cache_dir):
    """Three `privbench attack` processes at once, with different attacks, on one run: each
    entry is in the card once (the card is re-read and written under its lock); an attack
    named twice runs once."""
    import os
    import shutil
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run[1].parent, run_dir)
    env = {**os.environ, "PRIVBENCH_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    names = ["reid", "linkage", "learned-reid"]
    processes = [subprocess.Popen([sys.executable, "-m", "privbench.cli", "attack", str(run_dir), "-a", name,
                                   *(["-a", name] if name == "reid" else []), "-q"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for name in names]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    attacks = [entry["attack"] for entry in json.loads((run_dir / "card.json").read_text())["attacks"]]
    assert sorted(attacks) == sorted(names)


@pytest.mark.parametrize("rank, shown", [("0", True), ("1", False)])
def test_under_torchrun_the_error_line_is_printed_once_by_rank_0(monkeypatch, rank, shown):
    monkeypatch.setenv("RANK", rank)  # as torchrun sets it in each process, before they join
    result = CliRunner().invoke(app, ["run", "--set", "train.lr=fast"])
    assert result.exit_code == 2  # every rank stops
    assert result.stderr.strip().startswith("error: bad value for train.lr") is shown
    assert (result.stderr.strip() == "") is not shown
