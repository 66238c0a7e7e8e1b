"""The harness-vs-hand-written-loop benchmark (step_vs_loop.py) runs, small and on a CPU, and reports
every figure and target; the figures themselves come from a GPU (results/gpu/)."""

import json

from tests.benchmarks import step_vs_loop


def test_the_step_benchmark_reports_every_stepper_ratio_and_target(tmp_path, capsys):
    out = tmp_path / "steps.json"
    step_vs_loop.main(["--size", "tiny", "--device", "cpu", "--precision", "bf16", "--lengths", "16",
                       "--batch", "4", "--rounds", "2", "--steps", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["command"].startswith("python tests/benchmarks/step_vs_loop.py --size tiny")
    [result] = report["results"]
    assert set(result["steppers"]) == {"ideal", "sum", "pcgrad", "sum+fgm"}
    for figures in result["steppers"].values():
        assert figures["step_seconds"] > 0 and figures["examples_per_second"] > 0
        assert figures["mfu"] is None and figures["peak_memory_bytes"] is None  # CPU: no peak, no allocator
    assert all(len(ratio["rounds"]) == 2 for ratio in result["ratios"].values())
    assert set(result["targets"]) == {"sum >= 0.95x ideal throughput", "pcgrad <= 1.15x sum", "fgm <= 2.1x sum",
                                      "pcgrad peak <= sum + T n 4 bytes"}
    assert result["targets"]["pcgrad peak <= sum + T n 4 bytes"] is None
    assert "ratios: sum/ideal step" in capsys.readouterr().out
