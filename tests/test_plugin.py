"""The example plugin (examples/privbench-example-plugin), loaded the way an installed plugin is:
through its entry points, with its own config sections."""

import json
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from privbench import config, registry
from privbench.cli import app

PLUGIN = Path(__file__).parents[1] / "examples" / "privbench-example-plugin"


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The plugin's package on sys.path and its distribution metadata (entry points) beside it,
    as ``pip install`` leaves them; the registries rescan and are restored afterwards."""
    groups = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]["entry-points"]
    info = tmp_path / "privbench_example_plugin-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: privbench-example-plugin\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in points.items())
        for group, points in groups.items()))
    for reg in registry.REGISTRIES.values():
        reg.names()  # the built-ins first (their modules register once per process), before the plugin is visible
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    for reg in registry.REGISTRIES.values():
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))
        monkeypatch.setattr(reg, "_loaded", False)
    for name in [m for m in sys.modules if m.startswith("privbench_example_plugin")]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, so that importing registers
    yield
    for name in [m for m in sys.modules if m.startswith("privbench_example_plugin")]:
        del sys.modules[name]


def test_the_plugin_brings_its_components_and_their_config(installed):
    assert "blur" in registry.list_defenses() and "histogram-reid" in registry.list_attacks()
    assert registry.DEFENSES.get("blur").source == "privbench_example_plugin"
    cfg = config.resolve("quick", ["blur.sigma_mm=2.5", "attack.histogram_reid.bins=16"], defense="blur",
                         attacks=("histogram-reid",))
    assert cfg.blur.sigma_mm == 2.5 and cfg.attack.histogram_reid.bins == 16
    assert config.resolve("test").blur.sigma_mm == 4.0  # its own preset
    assert config.used_sections(cfg) == ["blur", "attack.histogram_reid"]
    digest = config.config_hash(cfg)
    assert digest != config.config_hash(config.resolve("quick", ["blur.sigma_mm=3"], defense="blur",
                                                        attacks=("histogram-reid",)))
    assert config.config_hash(config.resolve("quick")) == config.config_hash(
        config.resolve("quick", ["blur.sigma_mm=9"]))  # a run without blur ignores its section
    with pytest.raises(config.PrivbenchError, match=r"did you mean 'blur.sigma_mm'\?"):
        config.resolve("quick", ["blur.sigma=2"])
    with pytest.raises(config.PrivbenchError, match=r"blur.sigma_mm must be in \[0, 240\]"):
        config.resolve("quick", ["blur.sigma_mm=500"])


def test_blur_blurs_and_the_plugin_runs_through_the_cli(installed, tmp_path):
    from privbench_example_plugin.blur import Blur
    from privbench_example_plugin.histogram_reid import histograms

    blur = Blur()
    from monai.networks.layers import GaussianFilter
    blur.smooth = GaussianFilter(3, 1.0)
    image = torch.zeros(1, 1, 9, 9, 9)
    image[0, 0, 4, 4, 4] = 1.0
    out = blur.encode(image, None)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-3) and float(out.max()) < 0.1  # mass kept, spread
    h = histograms([torch.rand(1, 1, 8, 8, 8)], 4)
    assert h.shape == (1, 4) and float(h.sum()) == pytest.approx(1.0)

    result = CliRunner().invoke(app, ["run", "--preset", "test", "--defense", "blur", "--set", "blur.sigma_mm=6",
                                      "--attack", "reid", "--attack", "histogram-reid", "--out", str(tmp_path),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    (card_path,) = tmp_path.glob("mni-tissue/blur/*/card.json")
    card = json.loads(card_path.read_text())
    assert card["config"]["blur"] == {"sigma_mm": 6.0}
    assert card["config"]["attack"]["histogram_reid"] == {"bins": 32}
    assert [e["attack"] for e in card["attacks"]] == ["reid", "histogram-reid"]
    assert all(e["status"] == "done" and 0 <= e["metrics"]["f1"] <= 1 for e in card["attacks"])
    assert 0 <= card["utility"][0]["dice"]["mean"] <= 1
    defenses, attacks = (CliRunner().invoke(app, ["list", kind]).output for kind in ("defenses", "attacks"))
    assert "blur" in defenses and "sigma" in defenses and "histogram" in attacks


def test_runs_outlive_a_removed_plugin(installed, tmp_path, monkeypatch):
    """A card records only the sections its run uses, so removing a plugin leaves every other run
    attackable; a run of the removed plugin's own defense is refused with one line."""
    runner = CliRunner()
    for defense in ("none", "blur"):
        result = runner.invoke(app, ["run", "--preset", "test", "--defense", defense, "--out", str(tmp_path),
                                     "--quiet"])
        assert result.exit_code == 0, result.output
    (none_run,), (blur_run,) = (list(tmp_path.glob(f"mni-tissue/{d}/*/card.json")) for d in ("none", "blur"))
    recorded = json.loads(none_run.read_text())["config"]
    assert "blur" not in recorded and "mixup" not in recorded and "attack" not in recorded
    assert json.loads((none_run.parent / "config.json").read_text())["config"] == recorded
    for reg in registry.REGISTRIES.values():  # pip uninstall: only the built-ins are left
        monkeypatch.setattr(reg, "_entries", {n: e for n, e in reg._entries.items() if e.source == "privbench"})
    assert "blur" not in registry.list_defenses()

    result = runner.invoke(app, ["attack", str(none_run.parent), "-a", "reid", "--quiet"])
    assert result.exit_code == 0, result.output
    assert [e["attack"] for e in json.loads(none_run.read_text())["attacks"]] == ["reid"]
    result = runner.invoke(app, ["attack", str(blur_run.parent), "-a", "reid", "--quiet"])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: defense 'blur' is not installed (it came from a plugin: "
                                     "install it again to attack this run)")
