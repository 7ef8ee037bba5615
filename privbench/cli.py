"""The ``privbench`` command line: a thin layer over :mod:`privbench.runner`,
:mod:`privbench.registry` and :mod:`privbench.leaderboard`.

Errors a user can cause print one line and exit with code 2; ``privbench --debug ...``
shows the traceback instead.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from privbench import config as configs
from privbench.errors import Interrupted, NonFiniteError, PrivbenchError
from privbench.registry import DEFENSES, REGISTRIES

if TYPE_CHECKING:
    from privbench.runner import RunResult

# Each command imports the modules that do its work (torch, MONAI, matplotlib behind them)
# when it runs, so `privbench --help` and a mistyped option answer at once.

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Benchmark and privacy audit of privacy-preserving 3D segmentation.")
console = Console()
errors = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.")) -> None:
    _state["debug"] = debug


EXIT_USER_ERROR, EXIT_NON_FINITE, EXIT_INTERRUPTED = 2, 3, 130


def _friendly(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn errors a user can meet into one line on stderr (unless --debug): exit code 2 for
    bad input, 3 for a run stopped by a NaN or infinite number, 130 for Ctrl-C. Under torchrun
    every rank exits with the code, and rank 0 alone prints the line."""

    def say(message: Any) -> None:
        from privbench.engine import distributed

        if distributed.speaks():
            errors.print(message, highlight=False, soft_wrap=True, markup=False)

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Interrupted as exc:
            say(str(exc))
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except PrivbenchError as exc:
            if _state["debug"]:
                raise
            say(Text.assemble(("error:", "bold red"), f" {exc}"))
            raise typer.Exit(EXIT_NON_FINITE if isinstance(exc, NonFiniteError) else EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            say("interrupted; nothing was written (no run folder was created)")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


@app.command()
@_friendly
def run(
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task name (default: mni-tissue)."),
    defense: Optional[str] = typer.Option(None, "--defense", "-d", help="Defense name (default: none)."),
    attack: list[str] = typer.Option([], "--attack", "-a", help="Attack to run against the defense (repeatable)."),
    preset: str = typer.Option("quick", "--preset", "-p", help="test | quick | paper."),
    overrides: list[str] = typer.Option([], "--set", "-s", help="Override a config field: key=value."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Run seed."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Folder for run directories."),
    resume: bool = typer.Option(False, "--resume", help="Continue the newest unfinished run of this config."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a defense on a task, evaluate it, and write a result card."""
    from privbench import runner

    cfg = configs.resolve(preset, overrides, **{"task.name": task, "defense": defense, "seed": seed,
                                                "device": device, "attacks": tuple(attack) or None})
    result = runner.run(cfg, out=out, resume=resume, progress=not quiet)
    if result.card is not None:  # under torchrun, rank 0 reports
        _print_card(result)


@app.command("attack")
@_friendly
def attack_(
    run_dir: Path = typer.Argument(..., help="A finished run's folder (runs/<task>/<defense>/<run-id>)."),
    attack: list[str] = typer.Option(..., "--attack", "-a", help="Attack to run (repeatable)."),
    overrides: list[str] = typer.Option([], "--set", "-s",
                                        help="An attack's own setting, e.g. attack.bss.iterations=3000 "
                                             "(repeatable; the entry is labelled bss@iterations=3000)."),
    replay: bool = typer.Option(False, "--replay",
                                help="Draw the victims' keys from the client secret recorded in the run's "
                                     "truth.json (the same keys, the same numbers) instead of a fresh one."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Run attacks against a finished run's trained defense and add them to its card."""
    from privbench import runner

    _print_card(runner.attack(run_dir, attack, overrides=overrides, replay=replay, progress=not quiet))


def _print_card(result: RunResult) -> None:
    card = result.card
    table = Table(title=f"{card.task} / {card.defense}  (preset {card.preset}, seed {card.seed})")
    table.add_column("variant")
    classes = [c for c in card.utility[0]["dice"] if c != "mean"]
    for name in classes + ["mean"]:
        table.add_column(f"Dice {name}", justify="right")
    for entry in card.utility:
        table.add_row(entry["variant"], *(_cell(entry["dice"][c]) if entry["dice"][c] is not None
                                          else "n/a" for c in classes + ["mean"]))
    console.print(table)
    for entry in card.utility:  # tumor tasks: BraTS's regions
        if entry.get("regions"):
            console.print(f"BraTS regions ({entry['variant']}): " + ", ".join(
                f"{name} Dice {r['dice']:.3f} HD95 {r['hd95']:.1f} mm" for name, r in entry["regions"].items()))
    t = card.timings
    trained = "training " + (f"{t['train_seconds']:.0f} s" if t.get("train_seconds") is not None else "time unknown")
    trained += f" ({t['train_it_per_s']:.2f} it/s)" if t.get("train_it_per_s") else " (resumed after its last iteration)"
    console.print(f"{trained}, "
                  f"inference {t['infer_seconds_per_volume']:.2f} s/volume on {card.device.get('type', '?')}"
                  + (f" in {card.precision['dtype']}" if card.precision else ""))
    for line in card.summary:  # the defense's own lines (mixup: TTA cost, test-retest)
        console.print(line)
    for entry in card.attacks:
        if entry["status"] != "done":
            console.print(f"attack {entry['attack']}: {entry['status']} ({entry['reason']})")
            continue
        rows = Table(title=f"attack {entry['label']}: {entry['observes']}")
        columns = list(dict.fromkeys(k for row in entry["table"] for k in row))
        for column in columns:
            if column == "guess":
                rows.add_column(column, justify="left", min_width=14)
            else:
                rows.add_column(_header(column), justify="right")
        for row in entry["table"]:
            rows.add_row(*(_cell(row.get(c)) for c in columns))
        console.print(rows)
    worst = card.worst_case
    if "identity" in worst:
        tpr = worst["identity"]["tpr_at_1pct_fpr"]
        console.print(f"worst case, identity: {worst['identity']['attack']} top-1 {worst['identity']['top1']:.3f}"
                      + (f", TPR at 1% FPR {tpr:.3f}" if tpr is not None else ""))
    if "recovery" in worst:
        console.print(f"worst case, recovery: {worst['recovery']['attack']} MS-SSIM {worst['recovery']['msssim']:.3f}")
    console.print(f"card: {result.run_dir / 'card.json'}")


def _header(column: str) -> str:
    """A short header for a low-FPR column (``tpr_at_1pct_fpr`` -> ``TPR@1%``: TPR at 1% FPR)."""
    if column.startswith("tpr_at_") and column.endswith("_fpr"):
        return f"TPR@{column[7:-4].replace('pct', '%')}"
    return column


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.3f}"  # NaN: an empty cell
    return "" if value is None else str(value)


@app.command("list")
@_friendly
def list_(
    kind: str = typer.Argument(..., help="tasks | defenses | attacks"),
    pattern: str = typer.Argument("*", help="Wildcard filter, e.g. 'mni-*'."),
) -> None:
    """List registered tasks, defenses or attacks."""
    if kind not in REGISTRIES:
        raise PrivbenchError(f"cannot list {kind!r}: choose tasks, defenses or attacks")
    table = Table(title=f"privbench {kind}")
    columns = ("name", "description", "paper", "requires", "config", "from")
    for column in columns + (("granted (default config)",) if kind == "attacks" else ()):
        table.add_column(column, overflow="fold", no_wrap=column == "name")  # a name is never cut
    for entry in REGISTRIES[kind].entries(pattern):
        row = [entry.name, entry.description, entry.paper, ", ".join(entry.requires) or "-",
               ", ".join(name for name, _ in entry.sections) or "-", entry.source]
        if kind == "attacks":  # the threat model: what the attacker holds beyond the requests
            attack, config = entry.factory(), entry.sections[0][1]() if entry.sections else None
            row.append(", ".join(attack.granted(config)) or "requests only")
        table.add_row(*row)
    console.print(table)


@app.command()
@_friendly
def leaderboard(
    root: Path = typer.Argument(..., help="Folder searched for card.json files."),
    output: Path = typer.Option(Path("leaderboard.csv"), "--output", "-o", help="CSV to write."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Markdown table (default: beside the CSV)."),
    columns: Optional[str] = typer.Option(None, "--columns", "-c",
                                          help="Keep only these metric columns, e.g. dice_mean,reid_f1,reid_map."),
) -> None:
    """Collect every result card under ROOT into a CSV and a Markdown table."""
    from privbench import leaderboard as boards
    from privbench.card import STOPPED

    board = boards.collect(root)
    for path, reason in board.unreadable:
        errors.print(f"[yellow]warning:[/] skipped {path}: {reason}", highlight=False, soft_wrap=True)
    for path in board.stopped:
        errors.print(f"[yellow]warning:[/] no card in {path}: the run stopped on a non-finite number "
                     f"(see its {STOPPED})", highlight=False, soft_wrap=True)
    if columns and not board.table.empty:
        board.table = boards.select(board.table, [c.strip() for c in columns.split(",") if c.strip()])
    boards.write(board, output, markdown)
    console.print(f"{len(board.table)} rows from {root} -> {output}")


@app.command()
@_friendly
def budget(
    root: Path = typer.Argument(..., help="Folder of the cards of runs that differ in train.iterations."),
    output: Path = typer.Option(Path("budget.csv"), "--output", "-o", help="CSV to write (and .md, -fit.csv, .png)."),
    target: float = typer.Option(0.01, "--target", help="The gap to the baseline the fit is asked about."),
) -> None:
    """Dice against training budget: each defense's gap to none per budget, a power-law fit of
    the gap with a bootstrap interval, and the budget where it would fall under --target."""
    from privbench import budget as budgets

    if not (0 < target < 1):
        raise PrivbenchError("--target must be a gap in (0, 1)")
    for found in budgets.write(root, output, target):
        row = found.row()
        console.print(f"{found.defense}/{found.variant}: gap = {found.scale:.3g}·n^-{found.exponent:.3g}; "
                      f"under {target} at {row['budget_for_target'] or 'never'} ({row['closes']})")
    console.print(f"budget table: {output}")


@app.command()
@_friendly
def sweep(
    grid_file: Optional[Path] = typer.Option(None, "--grid", help="A TOML grid (\\[grid] tasks, defenses, attacks, "
                                             "seeds, preset, \\[grid.set], \\[grid.vary])."),
    task: list[str] = typer.Option([], "--task", help="Task (repeatable)."),
    defense: list[str] = typer.Option([], "--defense", "-d", help="Defense (repeatable)."),
    attack: list[str] = typer.Option([], "--attack", "-a", help="Attack run in every cell (repeatable)."),
    seed: list[int] = typer.Option([], "--seed", help="Seed (repeatable)."),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Preset of every cell."),
    set_: list[str] = typer.Option([], "--set", help="key=value for every cell (repeatable)."),
    vary: list[str] = typer.Option([], "--vary", help="key=value, one alternative of a varied key (repeatable)."),
    out: Path = typer.Option(Path("runs"), "--out", "-o", help="Where the runs go."),
    engine: str = typer.Option("local", "--engine", help="local | ray"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join (default: RAY_ADDRESS, "
                                          "or a local Ray)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run a grid of runs; finished cells are skipped, unfinished ones resume, failed ones are
    listed; exit 1 if a cell failed."""
    from privbench import sweep as sweeps

    grid = sweeps.load_grid(grid_file) if grid_file else sweeps.Grid()
    for name, values in (("tasks", task), ("defenses", defense), ("attacks", attack), ("seeds", seed)):
        if values:
            setattr(grid, name, list(values))
    grid.preset = preset or grid.preset
    grid.sets.update(dict(configs.split_item(item) for item in set_))
    for key, value in map(configs.split_item, vary):
        grid.vary.setdefault(key, []).append(value)
    outcomes = sweeps.run(grid, out, engine=engine, address=address, progress=not quiet)
    table = Table(title=f"sweep into {out}")
    for column in ("cell", "status", "run folder or error"):
        table.add_column(column, overflow="fold")
    for o in outcomes:
        table.add_row(o.cell.label(), o.status, o.error or o.run_dir)
    console.print(table)
    console.print(", ".join(f"{n} {status}" for status, n in sweeps.counts(outcomes).items()))
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(1)


@app.command()
@_friendly
def bench(
    defense: list[str] = typer.Option([], "--defense", "-d", help="Defense to measure (repeatable; default: all)."),
    preset: str = typer.Option("quick", "--preset", "-p", help="Settings measured (patch, batch, widths)."),
    overrides: list[str] = typer.Option([], "--set", "-s", help="Override a config field: key=value."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    steps: int = typer.Option(10, "--steps", help="Timed training steps per measurement."),
    warmup: int = typer.Option(2, "--warmup", help="Untimed steps first."),
    score_model: bool = typer.Option(True, "--score-model/--no-score-model", help="Also the bss score model."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="JSON to write (default: "
                                          "benchmark_result.json)."),
) -> None:
    """Training and inference speed of each defense on this machine -> benchmark_result.json."""
    from privbench import bench as benchmarks
    from privbench import card as cards

    output = output or Path(benchmarks.RESULT)
    cfg = configs.resolve(preset, overrides, device=device)
    for name in defense:
        DEFENSES.get(name)
    result = benchmarks.bench(cfg, list(defense) or None, steps=steps, warmup=warmup, score_model=score_model)
    cards.write_json_atomic(output, result)
    env = result["environment"]
    table = Table(title=f"{env['device']} ({env['device_type']}, torch {env['torch']}, {env['precision']}, "
                        f"{env['torch_threads']} threads), preset {preset}")
    for column in ("component", "variant", "it/s", "+data it/s", "batch ms", "starved", "infer s", "peak MiB",
                   "speed-up"):
        table.add_column(column, justify="left" if column in ("component", "variant") else "right")
    for r in result["results"]:
        table.add_row(r["component"], r["variant"], f"{r['step_it_per_s']:.2f}", f"{r['step_with_data_it_per_s']:.2f}",
                      f"{r['batch_ms_main_thread']:.0f}", "yes" if r["data_loading_starves"] else "no",
                      _cell(r["infer_seconds_per_volume"]), f"{r['peak_memory_mib']:.0f}",
                      f"{r['speedup_over_fp32_eager']:.2f}")
    console.print(table)
    console.print(f"written to {output}")


@app.command()
@_friendly
def regress(
    baseline: Path = typer.Argument(..., help="Folder of baseline cards, e.g. benchmarks/baselines."),
    cards: Optional[Path] = typer.Option(None, "--cards", help="Compare the cards under this folder "
                                         "instead of running the suite."),
    out: Path = typer.Option(Path("runs-regress"), "--out", "-o", help="Where the suite's runs go."),
    report: Path = typer.Option(Path("regress.md"), "--report", help="Markdown report to write."),
    update: bool = typer.Option(False, "--update", help="Rewrite the baseline cards with this suite's."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run the ci suite (or read --cards) and compare every headline number with the baseline
    cards; exit 1 if one moved outside its tolerance or is missing."""
    from privbench import regress as gate

    began = time.perf_counter()
    current = gate.load_cards(cards) if cards else gate.run_suite(out, progress=not quiet)
    if update:
        for path in gate.update(baseline, cards or out):
            console.print(f"baseline updated: {path}")
        return
    result = gate.report(gate.compare(gate.load_cards(baseline), current), time.perf_counter() - began)
    gate.write_report(result, report)
    bad = gate.failed(result.table)
    table = Table(title=f"regression gate: {len(result.table)} numbers, {len(bad)} failed")
    for column in ("metric", "baseline", "now", "delta", "tolerance", "verdict"):
        table.add_column(column, justify="left" if column in ("metric", "verdict") else "right",
                         overflow="fold")  # a metric's name is never cut short
    for row in (bad if len(bad) else result.table.head(0)).itertuples(index=False):
        table.add_row(*(_cell(v) for v in row))
    console.print(table)
    console.print(("[green]passed[/]" if result.passed else "[bold red]failed[/]") + f"; report: {report}")
    if not result.passed:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="privbench")


if __name__ == "__main__":
    sys.exit(main())
