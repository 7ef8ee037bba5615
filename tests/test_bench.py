"""privbench bench: training and inference speed per defense, as benchmark_result.json."""

import json
import math

from typer.testing import CliRunner

from privbench.cli import app


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_bench_writes_valid_json_with_a_row_per_configuration(tmp_path):
    out = tmp_path / "benchmark_result.json"
    # 5 steps, past the test preset's 3 iterations: the poly rate must stay defined there
    result = invoke("bench", "--preset", "test", "-d", "none", "--steps", "3", "--warmup", "2", "-o", out,
                    "--set", "train.channels_last=true", "--no-score-model")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    env = data["environment"]
    assert env["device_type"] == "cpu" and env["torch"] and env["precision"] == "float32" and env["cuda"] is None
    assert data["settings"]["patch_size"] == 32 and data["settings"]["steps"] == 3
    rows = {(r["component"], r["variant"]): r for r in data["results"]}
    assert set(rows) == {("none", "configured"), ("none", "fp32 eager")}
    for row in rows.values():
        for key in ("step_it_per_s", "step_with_data_it_per_s", "batch_ms_main_thread", "peak_memory_mib",
                    "speedup_over_fp32_eager"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        assert isinstance(row["data_loading_starves"], bool) and row["workers"] == 0
    assert rows[("none", "fp32 eager")]["speedup_over_fp32_eager"] == 1.0
    assert rows[("none", "configured")]["infer_seconds_per_volume"] > 0
    assert "written to" in result.output


def test_bench_refuses_bad_input_in_one_line(tmp_path):
    result = invoke("bench", "--preset", "test", "--steps", "0", "-o", tmp_path / "b.json")
    assert result.exit_code == 2 and "--steps >= 1" in result.output and not (tmp_path / "b.json").exists()
    result = invoke("bench", "--preset", "test", "-d", "mixupp", "-o", tmp_path / "b.json")
    assert result.exit_code == 2 and "mixup" in result.output
