"""sweep: grids of ordinary runs, skipped when finished, resumed when not, failures contained."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from privbench import runner, sweep
from privbench.cli import app
from privbench.errors import PrivbenchError

from helpers import die_at_batch

FAST = {"train.iterations": 1}  # the sweep's bookkeeping is under test, not training
GRID = sweep.Grid(defenses=["none", "deformation"], seeds=[0, 1], preset="test", sets=FAST)


@pytest.fixture(scope="module")
def swept(tmp_path_factory, cache_dir):
    """The 2 defenses x 2 seeds grid, run once into a folder the tests below share."""
    out = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRIVBENCH_CACHE", str(cache_dir))
        return out, sweep.run(GRID, out)


def test_a_grid_makes_every_cell_and_a_second_call_skips_them(swept):
    out, first = swept
    assert [(o.cell.defense, o.cell.seed, o.status) for o in first] == [
        ("none", 0, "done"), ("none", 1, "done"), ("deformation", 0, "done"), ("deformation", 1, "done")]
    assert len(list(out.glob("mni-tissue/*/*/card.json"))) == 4
    again = sweep.run(GRID, out)
    assert [o.status for o in again] == ["skipped"] * 4 and [o.run_dir for o in again] == [o.run_dir for o in first]


def test_a_failed_cell_does_not_stop_the_others_and_an_unfinished_one_resumes(swept, monkeypatch):
    out, first = swept
    real = runner.run

    def flaky(cfg, **kwargs):
        if cfg.seed == 2:
            raise RuntimeError("the GPU fell off the bus")
        return real(cfg, **kwargs)

    monkeypatch.setattr(runner, "run", flaky)
    (out / first[1].run_dir / "card.json").unlink()  # as if none's seed-1 run had died after its last checkpoint
    outcomes = sweep.run(sweep.Grid(defenses=["none"], seeds=[2, 1, 0], preset="test", sets=FAST), out)
    assert [o.status for o in outcomes] == ["failed", "resumed", "skipped"]
    assert "RuntimeError: the GPU fell off the bus" in outcomes[0].error and outcomes[1].run_dir == first[1].run_dir
    assert sweep.counts(outcomes) == {"done": 0, "resumed": 1, "skipped": 1, "failed": 1}


def test_a_grid_file_and_varied_keys(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('[grid]\ndefenses = ["none"]\nseeds = [0]\npreset = "test"\n'
                    '[grid.set]\n"train.batch_size" = 1\n[grid.vary]\n"train.lr" = [0.001, 0.01]\n')
    grid = sweep.load_grid(path)
    cells = sweep.cells(grid)
    assert [c.values for c in cells] == [(("train.lr", 0.001),), (("train.lr", 0.01),)]
    assert cells[1].config(grid).train.lr == 0.01 and cells[1].config(grid).train.batch_size == 1
    path.write_text('[grid]\ndefense = ["none"]\n')
    with pytest.raises(PrivbenchError, match="unknown grid entries \\['defense'\\]"):
        sweep.load_grid(path)
    with pytest.raises(PrivbenchError, match="did you mean 'none'"):  # checked before any run starts
        sweep.cells(sweep.Grid(defenses=["nonee"], preset="test"))
    with pytest.raises(PrivbenchError, match="train.lr must be in"):
        sweep.cells(sweep.Grid(preset="test", vary={"train.lr": [0.001, 5.0]}))


@pytest.mark.parametrize("line, message", [
    ('seeds = ["a"]', "[grid] seeds must be a list of integers, not ['a']"),
    ("seeds = [true]", "[grid] seeds must be a list of integers, not [True]"),
    ("preset = 3", "[grid] preset must be a preset name, not 3"),
    ('tasks = "mni-tissue"', "[grid] tasks must be a list of names, not 'mni-tissue'"),
    ("set = 1", "[grid] set must be a table of key = value, not 1"),
    ("seeds = [0", "cannot read the grid"),
])
def test_a_hand_edited_grid_is_checked_when_read(tmp_path, line, message):
    path = tmp_path / "grid.toml"
    path.write_text(f"[grid]\n{line}\n")
    result = CliRunner().invoke(app, ["sweep", "--grid", str(path), "-o", str(tmp_path / "runs")])
    assert result.exit_code == 2 and message in result.output and str(path) in result.output
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


def test_ctrl_c_stops_the_sweep_and_the_cli_exits_130(tmp_path, monkeypatch):
    """Ctrl-C in the second iteration of the first cell: the sweep stops there (the next cell
    never starts), the CLI exits 130 saying the checkpoint is kept, and the same sweep resumes
    the cell."""
    grid = ["sweep", "--defense", "none", "--seed", "0", "--seed", "1", "--preset", "test",
            "--set", "train.iterations=3", "--set", "train.checkpoint_every=1", "-o", str(tmp_path), "-q"]
    heal = die_at_batch(monkeypatch, 1)
    result = CliRunner().invoke(app, grid)
    assert result.exit_code == 130 and "keeps its last checkpoint" in result.output
    assert len(list(tmp_path.glob("mni-tissue/none/*"))) == 1  # seed 1 never started
    heal()
    again = CliRunner().invoke(app, grid)
    assert again.exit_code == 0 and "resumed" in again.output
    assert len(list(tmp_path.glob("mni-tissue/none/*/card.json"))) == 2


def test_keys_joined_by_a_comma_vary_together(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('[grid]\ndefenses = ["mixup"]\nseeds = [0]\npreset = "test"\n[grid.vary]\n'
                    '"mixup.eval_a_min, mixup.eval_a_max" = [[0.3, 0.7], [0.05, 0.15]]\n')
    grid = sweep.load_grid(path)
    ranges = [(c.config(grid).mixup.eval_a_min, c.config(grid).mixup.eval_a_max) for c in sweep.cells(grid)]
    assert ranges == [(0.3, 0.7), (0.05, 0.15)]
    assert sweep.cells(grid)[1].label() == "mni-tissue/mixup seed 0 mixup.eval_a_min=0.05 mixup.eval_a_max=0.15"
    with pytest.raises(PrivbenchError, match="varies 2 keys together: each of its values must be a list of 2"):
        sweep.cells(sweep.Grid(defenses=["mixup"], preset="test", vary={"mixup.eval_a_min,mixup.eval_a_max": [0.3]}))
    # the committed grids of the utility-privacy curves parse and check
    for committed in sorted(Path(__file__).parents[1].glob("leaderboard/grids/*.toml")):
        assert sweep.cells(sweep.load_grid(committed)), committed


def test_the_cli_prints_a_summary_and_exits_1_on_a_failed_cell(swept, monkeypatch):
    out, _ = swept
    result = CliRunner().invoke(app, ["sweep", "--defense", "none", "--defense", "deformation", "--seed", "0",
                                      "--seed", "1", "--preset", "test", "--set", "train.iterations=1",
                                      "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "0 done, 0 resumed, 4 skipped, 0 failed" in result.output.replace("\n", " ")
    monkeypatch.setattr(runner, "run", lambda cfg, **kw: (_ for _ in ()).throw(ValueError("broken")))
    result = CliRunner().invoke(app, ["sweep", "--defense", "none", "--seed", "5", "--preset", "test",
                                      "-o", str(out), "-q"])
    assert result.exit_code == 1 and "1 failed" in result.output


def test_the_same_sweep_runs_on_a_local_ray(swept, monkeypatch):
    pytest.importorskip("ray")
    # Ray nices its workers (15): beside the other xdist worker they would wait for a free core
    monkeypatch.setenv("RAY_worker_niceness", "0")
    out, first = swept
    grid = sweep.Grid(defenses=["none", "deformation"], seeds=[0, 1, 3], preset="test", sets=FAST)
    outcomes = sweep.run(grid, out, engine="ray", cpus_per_cell=1)
    assert [o.status for o in outcomes] == ["skipped", "skipped", "done", "skipped", "skipped", "done"]
    assert [o.run_dir for o in outcomes if o.status == "skipped"] == [o.run_dir for o in first]


def test_the_help_shows_the_grid_tables_brackets_and_all():
    result = CliRunner().invoke(app, ["sweep", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "([grid] tasks, defenses, attacks, seeds, preset, [grid.set], [grid.vary])" \
        in result.output


def test_a_folder_for_the_runs_that_cannot_be_written_is_refused_up_front(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    for out in ("/dev/full", str(tmp_path / "file")):
        result = CliRunner().invoke(app, ["sweep", "--defense", "none", "--preset", "test", "-o", out])
        assert result.exit_code == 2 and f"cannot put the runs in {out}" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
