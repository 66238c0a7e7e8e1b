"""The method benchmarks run on the table's estimator (bench.paired_rounds), so they cannot rot:
once here, tiny and with the fewest rounds, checking what they report, not how fast anything is."""

import json

from tests.benchmarks import cost_under_load, method_cost


def test_method_cost_reports_the_paired_estimator_for_every_variant():
    found = method_cost.measure("regularizers", "tiny", batch=2, length=8, rounds=2, steps=1, only=["fgm"])
    assert set(found["variants"]) == {"sum", "fgm"} and found["clock"] == "thread_cpu" and found["rounds"] == 2
    fgm = found["variants"]["fgm"]
    assert fgm["ratio_to_sum"] > 0 and fgm["ci"] is None and not fgm["precise"]  # 2 rounds: no 95 % interval
    assert found["variants"]["sum"]["ratio_to_sum"] == 1.0


def test_the_load_benchmark_renders_its_figures(tmp_path):
    row = {"ratio": 1.2, "ratio_ci": [1.18, 1.23], "rounds": 9, "precise": True, "wall_ratio": 1.3,
           "wall_ratio_ci": [1.1, 1.5], "clock": "thread_cpu"}
    base = {**row, "ratio": 1.0, "ratio_ci": [1.0, 1.0], "self_ratio": 1.01, "self_ratio_ci": [0.99, 1.02]}
    (tmp_path / "tiny.json").write_text(json.dumps({
        "quiet": {"joint_sum": base, "joint_pcgrad": row},
        "loaded": {"joint_sum": base, "joint_pcgrad": {**row, "ratio": 1.26, "precise": False}},
        "load_before": [0.5, 0, 0], "load_during": [4.1, 0, 0], "spinners": 2, "cpus": 2, "cpu": "x86_64",
        "torch": "2"}))
    text = cost_under_load.render(tmp_path)
    assert "| joint_sum (self) | 1.010 [0.990, 1.020] | 9 |" in text
    assert "| joint_pcgrad | 1.200 [1.180, 1.230] | 9 | 1.260 [1.180, 1.230] ? | 9 | +5.0 % |" in text
    assert "during the loaded half 4.1 with 2 spinning processes" in text
