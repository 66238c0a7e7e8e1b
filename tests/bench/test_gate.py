"""`mtlbench baseline` and `mtlbench check`: the regression gate."""

import json
from dataclasses import dataclass
from xml.etree import ElementTree

import pytest
import torch
from mtlbench.bench import gate
from mtlbench.bench.cli import main
from mtlbench.bench.files import write_json_atomic
from mtlbench.strategies import registry
from mtlbench.strategies.base import Regularizer

from tests.conftest import write_suite

CHECK = {"metric_tolerance": 0.02, "std_factor": 3.0, "cost_tolerance": 0.25, "allow_missing": False, "tasks": {}}


def record(recipe, seed, sst, sts, cost=1.0, suite="s", check=None, index=0):
    return {"run_id": f"{recipe}-seed{seed}", "suite": suite, "recipe_name": recipe, "recipe_index": index,
            "seed": seed, "primary_metrics": {"sst": "accuracy", "sts": "pearson"},
            "metrics": {"sst": {"accuracy": sst}, "sts": {"pearson": sts}},
            "best": {"sst": {"epoch": 1, "accuracy": sst}, "sts": {"epoch": 1, "pearson": sts}},
            "overall": (sst + sts) / 2, "overall_best": (sst + sts) / 2, "cost": {"ratio": cost},
            "train": {"examples_per_second": 100.0, "step_seconds_median": 0.01}, "peak_memory_mb": 100.0,
            "config": {"suite": {"name": suite, "train": {"lr": 1e-3}, "check": check or CHECK},
                       "recipe": {"name": recipe}},
            "env": {"python": "3.11", "torch": "2.13.0"}}


def results(tmp_path, records, name=None):
    directory = tmp_path / (name or f"now{len(list(tmp_path.glob('now*')))}")  # a fresh one per call
    for r in records:
        write_json_atomic(directory / f"{r['run_id']}.json", r)
    return directory


BASE = [record("sum", 0, 0.90, 0.80), record("sum", 1, 0.92, 0.82),
        record("pcgrad", 0, 0.91, 0.81, 1.05, index=1), record("pcgrad", 1, 0.91, 0.79, 1.07, index=1)]


@pytest.fixture
def baseline_file(tmp_path):
    path = tmp_path / "baseline.json"
    assert main(["baseline", str(results(tmp_path, BASE, "base")), "-o", str(path)]) == 0
    return path


def run_check(tmp_path, records, baseline_file, *extra):
    return main(["check", str(results(tmp_path, records)), "--baseline", str(baseline_file), *extra])


def test_baseline_keeps_means_stds_seeds_hashes_and_environment(baseline_file):
    baseline = json.loads(baseline_file.read_text())
    assert baseline["kind"] == "mtlbench-baseline" and baseline["suite"] == "s" and baseline["select"] == "last"
    sst = baseline["recipes"]["sum"]["metrics"]["sst"]
    assert sst["mean"] == pytest.approx(0.91) and sst["std"] == pytest.approx(0.014142, abs=1e-6)
    assert sst["values"] == [0.90, 0.92] and baseline["recipes"]["sum"]["seeds"] == [0, 1]
    assert baseline["recipes"]["pcgrad"]["cost"]["mean"] == pytest.approx(1.06)
    assert len(baseline["config_hash"]) == 16 and baseline["environment"]["torch"] == "2.13.0"


def test_results_pass_against_their_own_baseline(tmp_path, baseline_file, capsys):
    assert run_check(tmp_path, BASE, baseline_file) == 0
    out = capsys.readouterr().out
    assert "passed (6 values)" in out and "FAIL" not in out
    assert "| pcgrad | sst accuracy | 0.9100 | 0.9100 | +0.0000 | 0.8900 | > 0.0200 | pass |" in out


def test_tracking_settings_are_not_results_settings(tmp_path, baseline_file, capsys):
    """Turning live logging on changes where scalars go, not what a run gives: no settings note.
    A training setting does draw it."""
    import copy
    tracked = copy.deepcopy(BASE)
    for r in tracked:
        r["config"]["suite"]["tracking"] = {"report_to": ["tensorboard"], "log_every": 5}
    assert run_check(tmp_path, tracked, baseline_file) == 0
    assert "differ from the baseline" not in capsys.readouterr().out
    for r in tracked:
        r["config"]["suite"]["train"]["lr"] = 2e-3
    assert run_check(tmp_path, tracked, baseline_file) == 0
    assert "differ from the baseline" in capsys.readouterr().out


def test_a_metric_drop_beyond_the_tolerance_fails_and_names_recipe_and_task(tmp_path, baseline_file, capsys):
    # The same seeds: each moves by the same 0.01, no spread, the margin is the tolerance 0.02
    now = [*BASE[2:], record("sum", 0, 0.89, 0.80), record("sum", 1, 0.91, 0.82)]
    assert run_check(tmp_path, now, baseline_file) == 0  # 0.900 >= 0.91 - 0.02
    now = [*BASE[2:], record("sum", 0, 0.87, 0.80), record("sum", 1, 0.89, 0.82)]
    assert run_check(tmp_path, now, baseline_file) == 1
    out = capsys.readouterr().out
    assert "**FAILED** (1 of 6)" in out
    assert "| sum | sst accuracy | 0.9100 | 0.8800 | -0.0300 | 0.8900 | > 0.0200 | **FAIL** |" in out


# The case: 2 seeds far apart (std 0.092). Before, the margin was 3 x std = 0.276: a drop of
# 0.24 passed. Paired seed by seed, the drop is seen; a rerun whose seeds trade places cannot be told
# from noise, and the gate says so instead of passing.
WIDE = [record("sum", 0, 0.90, 0.62), record("sum", 1, 0.92, 0.75)]


def test_two_seeds_far_apart_do_not_let_a_large_drop_pass(tmp_path, capsys):
    baseline = tmp_path / "wide.json"
    assert main(["baseline", str(results(tmp_path, WIDE, "wide")), "-o", str(baseline)]) == 0
    dropped = [record("sum", 0, 0.90, 0.38), record("sum", 1, 0.92, 0.51)]
    assert run_check(tmp_path, dropped, baseline) == 1
    assert "| sum | sts pearson | 0.6850 | 0.4450 | -0.2400 | 0.6650 | > 0.0200 | **FAIL** |" in capsys.readouterr().out


def test_a_check_that_cannot_see_a_drop_of_must_detect_fails_closed_and_says_why(tmp_path, capsys):
    baseline = tmp_path / "wide.json"
    assert main(["baseline", str(results(tmp_path, WIDE, "wide")), "-o", str(baseline)]) == 0
    swapped = [record("sum", 0, 0.90, 0.75), record("sum", 1, 0.92, 0.62)]  # the same mean, seeds traded
    assert run_check(tmp_path, swapped, baseline) == 1
    row = next(line for line in capsys.readouterr().out.splitlines() if "| sts pearson |" in line)
    # changes +0.13, -0.13: standard error 0.13, margin 3 x 0.13 = 0.39 > must_detect 0.05;
    # seeds for a margin of 0.05: 2 x (0.39 / 0.05)^2 = 121.7 -> 122
    assert "| > 0.3900 | **FAIL** (blind: the check cannot see a drop under 0.3900 (must_detect 0.05); " \
           "about 122 seeds on both sides would) |" in row
    other_seeds = [record("sum", 2, 0.90, 0.62), record("sum", 3, 0.92, 0.75)]  # unpaired: two means' spread
    assert run_check(tmp_path, other_seeds, baseline, "--allow-missing") == 1
    assert "cannot see a drop under 0.2758" in capsys.readouterr().out  # 3 x sqrt(2 x 0.0919^2 / 2)


def test_a_cost_rise_beyond_the_relative_tolerance_fails(tmp_path, baseline_file, capsys):
    now = [*BASE[:2], record("pcgrad", 0, 0.91, 0.81, 1.30, index=1), record("pcgrad", 1, 0.91, 0.79, 1.31, index=1)]
    assert run_check(tmp_path, now, baseline_file) == 0  # 1.305 <= 1.06 x 1.25 = 1.325
    now = [*BASE[:2], record("pcgrad", 0, 0.91, 0.81, 1.40, index=1), record("pcgrad", 1, 0.91, 0.79, 1.31, index=1)]
    assert run_check(tmp_path, now, baseline_file) == 1
    assert "| pcgrad | cost x | 1.0600 | 1.3550 | +0.2950 | 1.3250 | – | **FAIL** |" in capsys.readouterr().out


@pytest.mark.parametrize(("base", "mine", "verdict"), [
    # a rise the two intervals explain passes: 1.30 > 1.05 x 1.10, but 1.12 is not above 1.20 x 1.10
    ({"mean": 1.05, "interval": [0.95, 1.20]}, {"mean": 1.30, "interval": [1.12, 1.45]}, "pass"),
    # the same rise measured precisely fails: 1.28 > 1.06 x 1.10
    ({"mean": 1.05, "interval": [1.04, 1.06]}, {"mean": 1.30, "interval": [1.28, 1.32]}, "FAIL"),
    # an older baseline (no interval) counts as its mean: 1.28 > 1.05 x 1.10
    ({"mean": 1.05}, {"mean": 1.30, "interval": [1.28, 1.32]}, "FAIL"),
    ({"mean": 1.05}, {"mean": 1.10}, "pass"),
])
def test_a_cost_fails_only_on_a_rise_beyond_the_tolerance_that_the_intervals_cannot_explain(base, mine, verdict):
    found = gate._compare_cost("pc", base, mine, 0.10)
    assert found.verdict == verdict and found.limit == pytest.approx((base.get("interval") or [0, base["mean"]])[1] * 1.1)


def test_per_task_tolerances_from_the_suite(tmp_path, baseline_file):
    loose = {**CHECK, "tasks": {"sts": {"metric_tolerance": 0.2, "std_factor": 3.0, "must_detect": 0.25,
                                        "cost_tolerance": 0.25}}}
    now = [record(r["recipe_name"], r["seed"], r["metrics"]["sst"]["accuracy"], 0.65, r["cost"]["ratio"],
                  check=loose, index=r["recipe_index"]) for r in BASE]
    assert run_check(tmp_path, now, baseline_file) == 0  # sts falls 0.15: within its own 0.2
    strict = [record(r["recipe_name"], r["seed"], r["metrics"]["sst"]["accuracy"], 0.65, r["cost"]["ratio"],
                     index=r["recipe_index"]) for r in BASE]
    assert run_check(tmp_path, strict, baseline_file) == 1


def test_missing_recipe_or_seed_fails_unless_allowed(tmp_path, baseline_file, capsys):
    assert run_check(tmp_path, BASE[:3], baseline_file) == 1  # pcgrad seed 1 missing
    assert "| pcgrad | seeds | – | – | – | – | – | **missing** (seeds 1 not in the results) |" in capsys.readouterr().out
    assert run_check(tmp_path, BASE[:2], baseline_file) == 1  # pcgrad missing
    assert "| pcgrad | recipe |" in capsys.readouterr().out
    assert run_check(tmp_path, BASE[:2], baseline_file, "--allow-missing") == 0
    allowing = [record(r["recipe_name"], r["seed"], 0.91, 0.8, check={**CHECK, "allow_missing": True})
                for r in BASE[:2]]
    assert run_check(tmp_path, allowing, baseline_file) == 0
    # A recipe the baseline lacks is reported, not failed.
    assert run_check(tmp_path, [*BASE, record("new", 0, 0.5, 0.5, index=2)], baseline_file) == 0
    assert "| new | recipe | – | – | – | – | – | new (not in the baseline) |" in capsys.readouterr().out


def test_junit_xml_and_the_github_step_summary(tmp_path, baseline_file, monkeypatch, capsys):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    now = [*BASE[2:], record("sum", 0, 0.5, 0.80), record("sum", 1, 0.5, 0.82)]
    junit = tmp_path / "report.xml"
    assert run_check(tmp_path, now, baseline_file, "--junit", str(junit)) == 1
    suite = ElementTree.parse(junit).getroot()
    assert suite.get("tests") == "6" and suite.get("failures") == "1"
    failed = [case for case in suite if case.find("failure") is not None]
    assert [(c.get("classname"), c.get("name")) for c in failed] == [("s.sum", "sst accuracy")]
    text = summary.read_text()
    assert text.startswith("earlier step\n") and "**FAILED**" in text and capsys.readouterr().out in text


def _diverged(recipe, seed, index=0):
    kept = record(recipe, seed, 0.0, 0.0, index=index)
    return {**{k: kept[k] for k in ("run_id", "suite", "recipe_name", "recipe_index", "seed", "primary_metrics",
                                    "config", "env")},
            "status": "diverged", "diverged": {"what": "non-finite loss (nan)", "task": "sst", "epoch": 1, "step": 3}}


def test_a_baseline_leaves_diverged_runs_out_and_says_so(tmp_path, capsys):
    runs = [*BASE, _diverged("sum", 2)]
    path = tmp_path / "baseline.json"
    assert main(["baseline", str(results(tmp_path, runs, "with-diverged")), "-o", str(path)]) == 0
    baseline = json.loads(path.read_text())
    assert baseline["recipes"]["sum"]["seeds"] == [0, 1] and baseline["records"] == 4
    assert baseline["notes"] == ["recipe 'sum' seed 2 diverged: left out of the baseline"]
    assert baseline["recipes"]["sum"]["metrics"]["sst"]["mean"] == pytest.approx(0.91)


def test_a_baseline_of_a_recipe_whose_every_run_diverged_is_refused(tmp_path, capsys):
    runs = [*BASE[:2], _diverged("pcgrad", 0, 1), _diverged("pcgrad", 1, 1)]
    assert main(["baseline", str(results(tmp_path, runs, "all-diverged")), "-o", str(tmp_path / "b.json")]) == 2
    assert "every run of recipe 'pcgrad' diverged: a baseline needs finished runs" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_a_baseline_holding_nan_cannot_pass_what_it_should_fail(tmp_path, baseline_file, capsys):
    """A NaN mean would pass every comparison: refused when the baseline is read (exit 2), and a
    results' NaN (a diverged run) fails against a finite baseline."""
    broken = json.loads(baseline_file.read_text())
    broken["recipes"]["sum"]["metrics"]["sst"]["mean"] = float("nan")
    (tmp_path / "nan.json").write_text(json.dumps(broken))
    assert run_check(tmp_path, BASE, tmp_path / "nan.json") == 2
    assert "recipes.sum.metrics.sst.mean: nan is not a finite number" in capsys.readouterr().err
    assert run_check(tmp_path, [*BASE[:1], _diverged("sum", 1), *BASE[2:]], baseline_file) == 1
    assert "| sum | sst accuracy | 0.9100 | – |" in capsys.readouterr().out


@pytest.mark.parametrize("now, code", [(BASE, 2), ([record("sum", 0, 0.5, 0.5), *BASE[1:]], 1)])
def test_a_report_that_cannot_be_written_keeps_the_verdict(now, code, tmp_path, baseline_file, capsys):
    """The verdict is printed; the JUnit file cannot be written: a regression still exits 1, a pass 2."""
    assert run_check(tmp_path, now, baseline_file, "--junit", "/proc/mtlbench-check.xml") == code
    captured = capsys.readouterr()
    assert "### mtlbench check" in captured.out
    assert "/proc/mtlbench-check.xml: cannot write" in captured.err and "the verdict above stands" in captured.err


def test_config_changes_are_noted_not_failed(tmp_path, baseline_file, capsys):
    now = json.loads(json.dumps(BASE))
    for r in now:
        r["config"]["suite"]["train"]["lr"] = 2e-3
    assert run_check(tmp_path, now, baseline_file) == 0
    assert "note: the suite's settings (training, data, model or tasks) differ" in capsys.readouterr().out


@pytest.mark.parametrize(("content", "message"), [
    (None, "file not found"),
    ("{not json", "not valid JSON (line 1"),
    ("[1, 2]", "expected a JSON object"),
    ({"kind": "mtlbench-baseline", "version": 1, "suite": "s", "select": "last", "recipes": {}},
     "missing key 'config_hash'"),
    ({"kind": "other", "version": 1, "suite": "s", "select": "last", "config_hash": "x", "recipes": {"a": {}}},
     "kind 'other' version 1; expected 'mtlbench-baseline'"),
    ({"kind": "mtlbench-baseline", "version": 1, "suite": "s", "select": "last", "config_hash": "x",
      "recipes": {"sum": {"seeds": [0], "config_hash": "y"}}}, "recipes.sum: missing key 'metrics'"),
    ({"kind": "mtlbench-baseline", "version": 1, "suite": "s", "select": "last", "config_hash": "x",
      "recipes": {"sum": {"seeds": [0], "config_hash": "y", "metrics": {"sst": {"metric": "accuracy"}}}}},
     "recipes.sum.metrics.sst: missing key 'mean'"),
])
def test_malformed_baselines_are_one_line_errors(tmp_path, capsys, content, message):
    path = tmp_path / "baseline.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert run_check(tmp_path, BASE, path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mtlbench: error: {path}: ") and message in err[0]
    assert not list(tmp_path.glob("now*/check.xml"))


def test_another_suites_baseline_is_refused(tmp_path, baseline_file, capsys):
    other = [record(r["recipe_name"], r["seed"], 0.9, 0.8, suite="other", index=r["recipe_index"]) for r in BASE]
    assert run_check(tmp_path, other, baseline_file) == 2
    assert "a baseline of suite 's', but the results are of suite 'other'" in capsys.readouterr().err


# End to end: real runs of a tiny suite, then the same suite with a planted regression.

GATE_RECIPES = ('[[recipes]]\nname = "joint"\nsampler = "joint"\n'
                '[[recipes]]\nname = "joint_pcgrad"\nsampler = "joint"\ncombiner = "pcgrad"\n')
GATE_TRAIN = "epochs = 3\nbatch_size = 16\nlr = 3e-3\nwarmup_ratio = 0.0"
GATE_SETTINGS = "[cost]\nrounds = 30\nblock_batches = 6\nblock_seconds = 0.05\n[check]\nmetric_tolerance = 0.05\ncost_tolerance = 0.15\n"


def _gate_run(tmp_path, name, planted: str = ""):
    """The gate suite, with `planted` lines added to the joint_pcgrad recipe, run into tmp_path/name."""
    suite = write_suite(tmp_path / f"{name}.toml", GATE_RECIPES + planted, train=GATE_TRAIN,
                        extra='baseline = "joint"\n' + GATE_SETTINGS)
    out = tmp_path / name
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--jobs", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def gate_baseline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gate")
    out = _gate_run(tmp, "base")
    assert main(["baseline", str(out), "-o", str(tmp / "baseline.json")]) == 0
    return tmp / "baseline.json", out


def _failed_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if "**FAIL**" in line]


def test_a_real_run_passes_against_its_own_baseline(gate_baseline, capsys):
    path, out = gate_baseline
    assert main(["check", str(out), "--baseline", str(path)]) == 0
    assert "passed (8 values)" in capsys.readouterr().out


def test_a_planted_regression_in_one_recipe_fails_on_its_metrics(gate_baseline, tmp_path, capsys):
    path, _ = gate_baseline
    # joint_pcgrad's update no longer reaches the encoder (an encoder lr of 0). Scaling the
    # combined gradient instead (weights of 0.01) would not do: AdamW's step is scale-invariant.
    out = _gate_run(tmp_path, "weaker", 'freezing = "frozen_backbone"\n')
    capsys.readouterr()
    assert main(["check", str(out), "--baseline", str(path)]) == 1
    failed = _failed_lines(capsys)
    assert failed and all(line.startswith("| joint_pcgrad |") for line in failed)
    assert any(" accuracy |" in line or " pearson |" in line for line in failed)


class ExtraForward(Regularizer):
    """A planted slowdown: three more forward passes of the task per step, adding nothing to the
    loss (about twice the step: far beyond the tolerance and the intervals even on a busy machine)."""

    @dataclass
    class Options:
        pass

    def terms(self, step):
        with torch.no_grad():  # forwards only: nothing to back-propagate
            for _ in range(3):
                step.loss_from_embeddings(step.input_embeddings)
        return {}


def test_an_extra_forward_per_step_fails_on_cost(gate_baseline, tmp_path, capsys):
    path, _ = gate_baseline
    registry.register("regularizer", "extra_forward_test")(ExtraForward)
    try:
        out = _gate_run(tmp_path, "slower", 'regularizers = ["extra_forward_test"]\n')
    finally:
        del registry._REGISTRY["regularizer"]["extra_forward_test"]
    capsys.readouterr()
    assert main(["check", str(out), "--baseline", str(path)]) == 1
    failed = _failed_lines(capsys)
    assert any(line.startswith("| joint_pcgrad | cost x |") for line in failed)
    assert all(line.startswith("| joint_pcgrad |") for line in failed)  # joint, untouched, still passes


def test_the_project_gates_itself_in_ci():
    """.ci/run runs the ci suite and checks it against the committed baseline, which is valid."""
    from pathlib import Path

    from mtlbench.bench import config

    script = Path(".ci/run").read_text().splitlines()
    assert any(line.startswith(".venv/bin/mtlbench run ci ") for line in script)
    assert any(line.startswith(".venv/bin/mtlbench check ") and "results/ci/baseline.json" in line for line in script)
    suite = config.load_suite("ci")
    baseline = gate.load_baseline(Path("results/ci/baseline.json"))
    assert baseline["suite"] == suite.name and set(baseline["recipes"]) == {r.name for r in suite.recipes}
    assert suite.train.threads == 1 and suite.train.device == "cpu"


def test_the_documented_github_workflow_parses_and_runs_the_gate():
    from pathlib import Path

    import yaml

    workflow = yaml.safe_load(Path("docs/ci/github-actions.yml").read_text())
    steps = workflow["jobs"]["gate"]["steps"]
    commands = [step.get("run", "") for step in steps]
    assert any(c.startswith("mtlbench run ") for c in commands)
    assert any(c.startswith("mtlbench check ") and "--baseline" in c for c in commands)
    assert any("torch==2.13.0" in c for c in commands)  # the CPU wheel before anything pulls torch
    assert Path(workflow["env"]["SUITE"]).is_file() and Path(workflow["env"]["BASELINE"]).parent.is_dir()


def test_a_baseline_is_replaced_only_with_force(tmp_path, baseline_file, capsys):
    before = baseline_file.read_text()
    dropped = [record("sum", 0, 0.5, 0.5), record("sum", 1, 0.5, 0.5)]
    assert main(["baseline", str(results(tmp_path, dropped)), "-o", str(baseline_file)]) == 2
    assert "baseline.json: exists; a baseline is replaced on purpose only: --force" in capsys.readouterr().err
    assert baseline_file.read_text() == before
    assert main(["baseline", str(results(tmp_path, dropped)), "-o", str(baseline_file), "--force"]) == 0
    assert json.loads(baseline_file.read_text())["recipes"]["sum"]["metrics"]["sst"]["mean"] == 0.5


def test_the_check_names_libraries_and_cpu_that_differ_from_the_baseline(tmp_path, baseline_file, capsys):
    moved = [{**r, "env": {"python": "3.11", "torch": "2.14.0", "cpu_model": "Another CPU"}} for r in BASE]
    assert run_check(tmp_path, moved, baseline_file) == 0  # a note, not a failure: the metrics decide
    out = capsys.readouterr().out
    assert "- note: torch 2.14.0 here, 2.13.0 in the baseline" in out and "cpu_model" not in out  # the baseline has none
