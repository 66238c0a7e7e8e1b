"""`mtlbench tune` end to end on tiny suites: the planted recipes the verdict must call right, an exact
budget under kill -9 and under two processes, trials as ordinary records, `run --tuned`, and the
shipped fair-comparison and stress suites in CI-sized form."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mtlbench.bench import api, tuning, verdict
from mtlbench.bench.cli import main
from mtlbench.bench.config import Suite, load_suite
from mtlbench.bench.records import load_records

from tests.conftest import SMALL_DATA, TINY_ENCODER

# Dev sets large enough for the bootstrap to see a real difference.
PLANTED_DATA = {**SMALL_DATA, "sst_train": 300, "sst_dev": 200, "quora_train": 300, "quora_dev": 200,
                "sts_train": 300, "sts_dev": 200}


def _table(recipes: list[dict], trials: int = 3, **extra) -> dict:
    return {"name": "planted", "tasks": ["sst", "quora", "sts"], "synthetic": PLANTED_DATA,
            "tiny_encoder": TINY_ENCODER, "seeds": 3, "baseline": "sum", "defaults": {"sampler": "joint"},
            "train": {"epochs": 2, "batch_size": 16, "lr": 2e-3}, "cost": {"enabled": False},
            "checkpoints": {"keep": 1},
            "tune": {"trials": trials, "startup_trials": 2, "space": {"lr": {"low": 1e-3, "high": 4e-3, "log": True}}},
            "recipes": recipes, **extra}


def _calls(records) -> dict[str, str]:
    return {v.recipe: v.call for v in verdict.verdicts(records)}


def test_planted_recipes_untuned_then_tuned(tmp_path):
    """The sum at a worse learning rate is called worse untuned and no different once both are tuned;
    the sum trained three times as long is really better, and stays better after tuning."""
    suite = Suite.from_dict(_table([{"name": "sum"}, {"name": "slow_sum", "train": {"lr": 2e-5}},
                                    {"name": "long_sum", "train": {"epochs": 5}}]))
    untuned = api.run(suite, out=tmp_path / "untuned")
    assert _calls(untuned) == {"slow_sum": "worse", "long_sum": "better"}
    from mtlbench.bench.tune_runner import tune

    tuned = tune(suite, tmp_path / "tuned", log=lambda m: None)
    assert _calls(tuned) == {"slow_sum": "no detectable difference", "long_sum": "better"}
    for record in tuned:
        assert record.tuned["trials"] == 3 and record.tuned["budget"]["trials"] == 3
        assert record.tuned["parameters"]["lr"] == record.config["recipe"]["train"]["lr"]
    text = (tmp_path / "tuned" / "table.md").read_text()
    assert "## Verdict against sum" in text and "slow_sum**: no detectable difference" in text
    trials = load_records(tmp_path / "tuned" / tuning.FOLDER / tuning.TRIALS)
    assert len([r for r in trials if r.trial["recipe"] == "sum"]) == 3
    assert all(r.trial["parameters"]["lr"] >= 1e-3 for r in trials)
    assert all(r.config["suite"]["validation"]["split"] == "carved" for r in trials)


def _suite_file(tmp_path: Path, trials: int = 4) -> Path:
    import tomllib  # noqa: F401 - the file below must be valid TOML; written by hand for readability

    path = tmp_path / "suite.toml"
    data = "\n".join(f"{k} = {v}" for k, v in SMALL_DATA.items())
    encoder = "\n".join(f"{k} = {v}" for k, v in TINY_ENCODER.items())
    path.write_text(f"""name = "killed"
tasks = ["sst", "quora", "sts"]
seeds = 1
[train]
epochs = 3
batch_size = 16
[synthetic]
{data}
[tiny_encoder]
{encoder}
[cost]
enabled = false
[tune]
trials = {trials}
startup_trials = 2
pruner = "none"
[defaults]
sampler = "joint"
[[recipes]]
name = "sum"
""")
    return path


def _tune_command(path: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "mtlbench.bench.cli", "tune", str(path), "--out", str(out), "--no-final", "--no-progress"]


def _states(out: Path, study: str) -> dict:
    import optuna

    storage = tuning.open_storage(tuning.storage_url(out, None))
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    counts = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return {"counts": counts, "trials": trials}


def test_kill_9_during_tune_then_the_same_command(tmp_path, private_cache):
    path, out = _suite_file(tmp_path), tmp_path / "out"
    environment = {**os.environ, "MTLBENCH_CACHE": str(private_cache)}
    process = subprocess.Popen(_tune_command(path, out), env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, cwd=Path(__file__).parents[2])
    checkpoints = out / tuning.FOLDER / tuning.TRIALS / "checkpoints"
    for _ in range(2400):  # killed mid-trial: after a record, with an epoch saved (at most 8 minutes of polls)
        records = list((out / tuning.FOLDER / tuning.TRIALS).glob("*.json"))
        if records and checkpoints.is_dir() and any(p.name.startswith("epoch-") for p in checkpoints.rglob("*")):
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    again = subprocess.run(_tune_command(path, out), env=environment, capture_output=True, text=True, check=False,
                           cwd=Path(__file__).parents[2], timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    states = _states(out, "killed.sum")
    finished = states["counts"].get("COMPLETE", 0)
    assert finished == 4, states["counts"]  # exact: none lost, none counted twice
    retried = {n for t in states["trials"] for n in t.system_attrs.get("retry_history", [])}
    assert {t.number for t in states["trials"] if t.state.name == "FAIL"} <= retried
    for record in load_records(out / tuning.FOLDER / tuning.TRIALS):  # every record whole
        assert record.finished and record.trial["recipe"] == "sum"
    assert "did not end; its parameters run again" in again.stderr or states["counts"].get("FAIL", 0) == 0


def test_two_tune_processes_share_one_study(tmp_path, private_cache):
    path, out = _suite_file(tmp_path, trials=3), tmp_path / "out"
    environment = {**os.environ, "MTLBENCH_CACHE": str(private_cache)}
    assert main(["tune", str(path), "--out", str(out), "--trials", "1", "--no-final", "--no-progress"]) == 0
    processes = [subprocess.Popen(_tune_command(path, out), env=environment, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
                 for _ in range(2)]
    for process in processes:
        assert process.wait(timeout=600) == 0, process.stderr.read()[-2000:]
    states = _states(out, "killed.sum")
    assert states["counts"].get("COMPLETE", 0) == 3, states["counts"]
    surplus = [t for t in states["trials"] if t.state.name == "FAIL"]
    assert all(t.user_attrs.get("surplus") for t in surplus)
    run_ids = [t.user_attrs["run_id"] for t in states["trials"] if t.state.name == "COMPLETE"]
    assert len(run_ids) == len(set(run_ids))  # no two trials drew the same point, no run trained twice


def test_run_tuned_reads_the_studies_and_table_verdict_prints(tmp_path, capsys):
    path, out = _suite_file(tmp_path, trials=2), tmp_path / "out"
    assert main(["tune", str(path), "--out", str(out), "--no-final", "--no-progress"]) == 0
    assert not list(out.glob("*.json"))
    assert main(["run", str(path), "--tuned", str(out), "--out", str(tmp_path / "final"), "--no-progress"]) == 0
    (record,) = load_records(tmp_path / "final")
    assert record.tuned["trials"] == 2 and record.tuned["study"] == "killed.sum"
    capsys.readouterr()
    assert main(["table", str(tmp_path / "final"), "--verdict"]) == 0
    assert "No recipe to compare with the baseline" in capsys.readouterr().out
    assert main(["run", str(path), "--tuned", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert main(["tune", str(path), "--out", str(tmp_path / "y"), "--storage", "nosuchdb://x"]) == 2


def _small(name: str, recipes: list[str], trials: int = 2, **changes) -> Suite:
    """A shipped suite at CI size: its tasks, dials, recipes and [tune] with tiny data and encoder."""
    import tomllib

    shipped = load_suite(name)
    table = tomllib.loads(Path(shipped.source).read_text())
    table.update({"synthetic": SMALL_DATA, "tiny_encoder": TINY_ENCODER, "seeds": 2, "cost": {"enabled": False},
                  "train": {**table["train"], "epochs": 1, "batch_size": 16},
                  "tune": {**table["tune"], "trials": trials, "startup_trials": 1}, **changes})
    table["recipes"] = [r for r in table["recipes"] if r["name"] in recipes]
    return Suite.from_dict(table, source=shipped.source)


def test_fair_comparison_end_to_end_small(tmp_path):
    from mtlbench.bench.tune_runner import tune

    suite = _small("fair-comparison", ["sum", "cagrad", "famo"], front={"divisions": 2})
    records = tune(suite, tmp_path, log=lambda m: None)
    found = verdict.verdicts(records)
    assert [v.recipe for v in found] == ["cagrad", "famo"]
    assert all(v.inside_front is not None and v.budget == "2 trials" for v in found)
    assert all(v.hypervolume <= v.front_hypervolume + 1e-12 or not v.inside_front for v in found)
    assert sorted(p.name for p in tmp_path.glob("front-*.png")) == ["front-quora-sts.png", "front-sst-quora.png",
                                                                   "front-sst-sts.png"]
    cagrad = next(r for r in records if r.recipe_name == "cagrad")
    assert 0.1 <= cagrad.tuned["parameters"]["combiner.c"] <= 0.9  # its own option searched
    assert len([r for r in records if r.front]) == 2 * 6


@pytest.mark.parametrize("name", ["stress-loss-scale", "stress-size", "stress-noise", "stress-conflict"])
def test_stress_suites_end_to_end_small(tmp_path, name):
    from mtlbench.bench.tune_runner import tune

    suite = _small(name, ["sum", "imtl_g"], trials=1, seeds=1)
    untuned = api.run(suite, out=tmp_path / "untuned")
    tuned = tune(suite, tmp_path / "tuned", log=lambda m: None)
    for records, budget in ((untuned, "untuned"), (tuned, "1 trial")):
        (found,) = verdict.verdicts(records)
        assert found.recipe == "imtl_g" and found.budget == budget and found.call in (
            "better", "worse", "mixed", "no detectable difference")


def test_a_study_made_with_other_settings_is_refused(tmp_path):
    path, out = _suite_file(tmp_path, trials=1), tmp_path / "out"
    assert main(["tune", str(path), "--out", str(out), "--no-final", "--no-progress"]) == 0
    assert main(["tune", str(path), "--out", str(out), "--trials", "2", "--no-final", "--no-progress"]) == 0
    assert _states(out, "killed.sum")["counts"] == {"COMPLETE": 2}  # more trials extend the study
    assert main(["tune", str(path), "--out", str(out), "--epochs", "1", "--no-final", "--no-progress"]) == 2


def test_tune_trials_as_ray_tasks_share_the_study(tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'mtlbench[ray]'")
    path, out = _suite_file(tmp_path, trials=2), tmp_path / "out"
    assert main(["tune", str(path), "--out", str(out), "--executor", "ray", "--jobs", "2", "--no-final",
                 "--no-progress"]) == 0
    assert _states(out, "killed.sum")["counts"].get("COMPLETE", 0) == 2
    assert {r.trial["number"] for r in load_records(out / tuning.FOLDER / tuning.TRIALS)} <= {0, 1, 2, 3}


def test_a_storage_url_holds_the_studies_and_run_tuned_reads_them(tmp_path):
    path, out = _suite_file(tmp_path, trials=1), tmp_path / "out"
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    assert main(["tune", str(path), "--out", str(out), "--storage", url, "--no-final", "--no-progress"]) == 0
    assert (tmp_path / "shared.db").is_file() and not (out / tuning.FOLDER / tuning.DEFAULT_STORAGE).exists()
    assert main(["run", str(path), "--tuned", str(out), "--out", str(tmp_path / "final")]) == 2  # not there
    assert main(["run", str(path), "--tuned", str(out), "--storage", url, "--out", str(tmp_path / "final"),
                 "--no-progress"]) == 0
    (record,) = load_records(tmp_path / "final")
    assert record.tuned["storage"] == url and record.tuned["trials"] == 1
