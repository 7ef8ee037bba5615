"""The precision choice: bfloat16 only where it is shown to work, float32 (and why) elsewhere.

Every CPU is simulated, so the tests say the same on any machine: "a CPU where bfloat16 works"
reports native bfloat16 and computes its convolutions exactly, rounding their outputs to
bfloat16 (:func:`faithful_bfloat16`); "a CPU where bfloat16 is wrong" adds what was observed on
an AMD EPYC with AVX512-BF16: 3D convolutions that give different numbers on every call. On
such a machine the real kernels give NaN (``tests/conftest.py`` pins every other test to a CPU
without bfloat16 units).
"""

import json

import pytest
import torch
from typer.testing import CliRunner

from privbench import engine, precision
from privbench.cli import app

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def native_cpu(monkeypatch):
    """A CPU reporting native bfloat16 units, with the self-test's memo cleared before and after."""
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: True)
    precision._cpu_self_test.cache_clear()
    yield
    precision._cpu_self_test.cache_clear()


def _exact_then_rounded(op):
    """``op`` under CPU autocast as a correct bfloat16 kernel would be: computed in float32 and
    rounded to bfloat16, deterministic and close to float32, whatever this CPU's kernels do."""
    def run(*args, **kwargs):
        if not torch.is_autocast_enabled("cpu"):
            return op(*args, **kwargs)
        with torch.autocast("cpu", enabled=False):
            exact = op(*(a.float() if isinstance(a, torch.Tensor) else a for a in args), **kwargs)
        return exact.bfloat16()
    return run


@pytest.fixture
def faithful_bfloat16(native_cpu, monkeypatch):
    """A CPU whose bfloat16 works: native units and correctly rounded convolutions."""
    for name in ("conv3d", "conv_transpose3d"):
        monkeypatch.setattr(torch.nn.functional, name, _exact_then_rounded(getattr(torch.nn.functional, name)))


@pytest.fixture
def wrong_bfloat16(faithful_bfloat16, monkeypatch):
    """3D convolutions that are not repeatable under CPU bfloat16 autocast (exact in float32)."""
    original = torch.nn.functional.conv3d

    def flaky(*args, **kwargs):
        out = original(*args, **kwargs)
        if torch.is_autocast_enabled("cpu"):
            out = out + 0.05 * torch.randn(out.shape, generator=flaky.noise).to(out.dtype)
        return out

    flaky.noise = torch.Generator().manual_seed(0)
    monkeypatch.setattr(torch.nn.functional, "conv3d", flaky)


def test_cuda_keeps_bfloat16_and_amp_off_means_float32():
    assert precision.choose(CUDA).dtype == "bfloat16" and precision.choose(CUDA).autocast
    for device in (CPU, CUDA):
        chosen = precision.choose(device, requested=False)
        assert chosen == precision.Precision("float32", "train.amp=false") and not chosen.autocast


def test_a_cpu_without_native_bfloat16_stays_in_float32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: False)
    chosen = precision.choose(CPU)
    assert chosen.dtype == "float32" and "no native bfloat16" in chosen.reason
    with engine.autocast(CPU):
        assert not torch.is_autocast_enabled("cpu")


def test_a_cpu_whose_bfloat16_passes_the_self_test_uses_it(faithful_bfloat16):
    chosen = precision.choose(CPU)
    assert chosen.dtype == "bfloat16" and "passed the self-test" in chosen.reason
    with engine.autocast(CPU):
        assert torch.is_autocast_enabled("cpu")


def test_the_self_test_catches_unrepeatable_bfloat16_and_falls_back(wrong_bfloat16, caplog):
    with caplog.at_level("WARNING", logger="privbench"):
        chosen = precision.choose(CPU)
        assert precision.choose(CPU) is chosen  # tested once per process and thread count
    assert chosen.dtype == "float32" and "failed the self-test" in chosen.reason
    assert "not deterministic" in chosen.reason
    (line,) = [r.getMessage() for r in caplog.records if "self-test" in r.getMessage()]
    assert line.startswith("precision: float32, because bfloat16 failed")
    with engine.autocast(CPU):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("fault, message", [
    (lambda out: out * float("nan"), "non-finite values"),
    (lambda out: out.abs(), "off float32"),  # not undone by the instance norm that follows
])
def test_the_self_test_catches_non_finite_or_inaccurate_bfloat16(faithful_bfloat16, monkeypatch, fault, message):
    assert precision.bfloat16_problem(CPU) is None  # correct bfloat16 passes
    original = torch.nn.functional.conv3d

    def faulty(*args, **kwargs):
        out = original(*args, **kwargs)
        return fault(out) if torch.is_autocast_enabled("cpu") else out

    monkeypatch.setattr(torch.nn.functional, "conv3d", faulty)
    assert message in precision.bfloat16_problem(CPU)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_the_first_choice_may_come_during_inference(faithful_bfloat16, context):
    with context():
        assert precision.choose(CPU).dtype == "bfloat16"


def test_the_self_test_leaves_the_random_streams_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    precision.bfloat16_problem(CPU)
    assert torch.equal(torch.rand(3), expected)


def test_readme_command_1_on_a_cpu_with_wrong_bfloat16_gives_the_float32_result(wrong_bfloat16, tmp_path):
    """`privbench run --defense none` (test preset): float32 chosen and said, same weights as amp off."""
    cli = CliRunner()
    wrong = cli.invoke(app, ["run", "--defense", "none", "--preset", "test", "-q", "--out", tmp_path / "a"])
    assert wrong.exit_code == 0, wrong.output
    exact = cli.invoke(app, ["run", "--defense", "none", "--preset", "test", "-q", "--out", tmp_path / "b",
                             "--set", "train.amp=false"])
    assert exact.exit_code == 0, exact.output
    (card_a,), (card_b,) = (list((tmp_path / x).glob("*/*/*/card.json")) for x in "ab")
    card = json.loads(card_a.read_text())
    assert card["precision"]["dtype"] == "float32" and card["amp"] is False
    assert "failed the self-test" in card["precision"]["reason"]
    log_lines = [line for line in (card_a.parent / "run.log").read_text().splitlines() if "precision: " in line]
    assert len(log_lines) == 1 and "float32 (bfloat16 failed the self-test" in log_lines[0]
    a, b = torch.load(card_a.parent / "checkpoint.pt"), torch.load(card_b.parent / "checkpoint.pt")
    for name, tensor in a["state"]["net"].items():
        assert torch.equal(tensor, b["state"]["net"][name]), name
    assert card["utility"] == json.loads(card_b.read_text())["utility"]
