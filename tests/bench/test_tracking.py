"""Live scalars in the trackers: TensorBoard's own reader and the CSV hold every scalar for every
logged step; MLflow's search_runs finds one run per recipe x seed with params and metrics; W&B's
offline run files hold the history; a run killed after an epoch and resumed continues one series
with no step twice in every tracker and keeps the same series in its record; logging off reads
nothing and writes nothing; a missing tracker library is one line naming the extra."""

import csv
import json
import os
import signal
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from mtlbench.bench.cli import main

from tests.conftest import write_suite

MTLBENCH = str(Path(sys.executable).with_name("mtlbench"))
RECIPES = ('[cost]\nenabled = false\n[tracking]\nlog_every = 2\n'
           '[[recipes]]\nname = "pcgrad"\nsampler = "joint"\ncombiner = "pcgrad"\n')


def csv_rows(out: Path) -> list[tuple[int, str, float]]:
    with (out / "tracking" / "csv" / "track" / "pcgrad" / "seed0.csv").open(newline="") as handle:
        return [(int(r["step"]), r["name"], float(r["value"])) for r in csv.DictReader(handle)]


def tensorboard_scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(out / "tracking" / "tensorboard" / "track" / "pcgrad" / "seed0"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def mlflow_history(out: Path, suite: str, run_name: str, key: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'tracking' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(suite).experiment_id
    (run,) = client.search_runs([experiment], f"tags.`mtlbench.run` = '{run_name}'")
    return [m.step for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.timestamp)]


def wandb_records(run_file: Path):
    """The protobuf records of an offline W&B run file (a LevelDB-style log: 32 KiB blocks, each
    record a 7-byte header, checksum, length and type, then its piece), parsed by wandb's own proto."""
    from wandb.proto import wandb_internal_pb2

    data, position, pieces = run_file.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        piece, position = data[position + 7:position + 7 + length], position + 7 + length
        pieces = piece if kind in (1, 2) else pieces + piece  # full, first / middle, last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record


def wandb_history(out: Path, run_id: str) -> tuple[list[dict], dict]:
    """The history rows (step, scalars) of the W&B run `run_id` over its offline files in the order
    `wandb sync` sends them, each step once (W&B drops a step not above the last), and its config."""
    rows, config = [], {}
    for run_file in sorted((out / "tracking" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")):
        for record in wandb_records(run_file):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                       for item in record.history.item}
                if not rows or row["_step"] > rows[-1]["_step"]:
                    rows.append(row)
            elif kind == "run":
                config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
    return rows, config


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return write_suite(tmp_path_factory.mktemp("tracking") / "track.toml", RECIPES,
                       train="epochs = 2\nbatch_size = 16\nlr = 2e-3", name="track")


def test_every_scalar_of_every_logged_step_reaches_tensorboard_and_the_csv(suite, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--report-to", "csv,tensorboard"]) == 0
    record = json.loads((out / "track.pcgrad-seed0.json").read_text())
    steps = record["train"]["steps"]
    logged = list(range(2, steps + 1, 2))
    expected = {"loss/sst", "loss/quora", "loss/sts", "lr", "grad_norm", "examples_per_second",
                "weight/sst", "weight/quora", "weight/sts", "cosine/sst|quora", "cosine/sst|sts", "cosine/quora|sts"}
    scalars = tensorboard_scalars(out)
    for name in expected:
        assert [step for step, _ in scalars[name]] == logged, name
    for epoch in record["history"]:  # the dev metrics at each epoch's last step
        assert (epoch["step"], pytest.approx(epoch["dev"]["sst"]["accuracy"])) in scalars["dev/sst/accuracy"]
    rows = csv_rows(out)
    assert {name for _, name, _ in rows} >= expected and Counter((s, n) for s, n, _ in rows).most_common(1)[0][1] == 1
    weights = {s: v for s, n, v in rows if n == "weight/sst"}
    assert set(weights) == set(logged) and all(v == pytest.approx(dict(scalars["weight/sst"])[s]) for s, v in weights.items())


def test_mlflow_and_wandb_hold_one_run_per_recipe_and_seed_with_params_and_metrics(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipes = RECIPES + '[[recipes]]\nname = "sum"\nsampler = "joint"\ncombiner = "sum"\n'
    suite = write_suite(tmp_path / "two.toml", recipes, extra="seeds = [0, 1]", name="two")
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--jobs", "2", "--report-to", "mlflow,wandb"]) == 0
    try:  # set_tracking_uri sets MLFLOW_TRACKING_URI for every later subprocess too: unset after
        mlflow.set_tracking_uri(f"sqlite:///{out / 'tracking' / 'mlflow.db'}")
        runs = mlflow.search_runs(experiment_names=["two"])
    finally:
        mlflow.set_tracking_uri(None)
    assert sorted(runs["tags.mlflow.runName"]) == ["two/pcgrad/seed0", "two/pcgrad/seed1", "two/sum/seed0", "two/sum/seed1"]
    assert set(runs["status"]) == {"FINISHED"} and set(runs["params.config/suite/train/lr"]) == {"0.002"}
    for _, run in runs.iterrows():
        record = json.loads((out / f"two.{run['tags.recipe']}-seed{run['tags.seed']}.json").read_text())
        assert run["metrics.final/overall"] == pytest.approx(record["overall"])
        assert run["metrics.dev/sst/accuracy"] == pytest.approx(record["metrics"]["sst"]["accuracy"])
        assert not pd_isnan(run["metrics.loss/quora"]) and not pd_isnan(run["metrics.grad_norm"])
    assert not pd_isnan(runs.loc[runs["tags.recipe"] == "pcgrad", "metrics.cosine/sst:quora"]).any()  # "|" -> ":"
    identities = sorted((out / "tracking" / "wandb-runs" / "two").glob("*/seed*.id"))
    assert len(identities) == 4
    for identity in identities:
        rows, config = wandb_history(out, identity.read_text())
        record = json.loads((out / f"two.{identity.parent.name}-{identity.stem}.json").read_text())
        logged = list(range(2, record["train"]["steps"] + 1, 2))
        assert [row["_step"] for row in rows if "loss/sst" in row] == logged
        assert [row["loss/sst"] for row in rows if "loss/sst" in row] == pytest.approx(record["series"]["values"]["loss/sst"])
        assert config["config/suite/train/lr"] == 0.002


def pd_isnan(value):
    import pandas

    return pandas.isna(value)


def test_a_missing_tracker_library_is_one_line_naming_the_extra_before_any_run(suite, tmp_path, monkeypatch, capsys):
    for module in ("mlflow", "wandb"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
        out = tmp_path / module
        assert main(["run", str(suite), "--out", str(out), "--no-progress", "--report-to", module]) == 2
        assert f"report_to '{module}' needs the {module} extra: pip install 'mtlbench[{module}]'" in capsys.readouterr().err
        assert not list(out.glob("*.json"))


def test_a_killed_run_resumed_continues_one_series_without_a_step_twice(suite, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    out = tmp_path / "out"
    command = [MTLBENCH, "run", str(suite), "--out", str(out), "--no-progress", "--report-to", "csv,tensorboard,mlflow,wandb"]
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "WANDB_MODE": "offline"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    for line in process.stderr:
        if "epoch 1/2 checkpoint saved" in line:
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert subprocess.run(command, check=False, capture_output=True, text=True, env=env).returncode == 0
    record = json.loads((out / "track.pcgrad-seed0.json").read_text())
    logged = list(range(2, record["train"]["steps"] + 1, 2))
    assert [s for s, _ in tensorboard_scalars(out)["loss/sst"]] == logged
    assert [s for s, n, _ in csv_rows(out) if n == "loss/sst"] == logged
    assert mlflow_history(out, "track", "track/pcgrad/seed0", "loss/sst") == logged
    run_id = (out / "tracking" / "wandb-runs" / "track" / "pcgrad" / "seed0.id").read_text()
    rows, _ = wandb_history(out, run_id)
    assert len(list((out / "tracking" / "wandb").glob(f"offline-run-*-{run_id}"))) == 2  # killed, then resumed
    assert [row["_step"] for row in rows if "loss/sst" in row] == logged  # what the killed run flushed, then on
    # the record's series is the uninterrupted one's: the steps, and the losses of the resumed steps
    assert record["series"]["steps"] == logged
    assert [v for s, n, v in csv_rows(out) if n == "loss/sst"] == pytest.approx(record["series"]["values"]["loss/sst"])


def test_without_report_to_nothing_is_written(suite, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--no-progress"]) == 0
    assert not (out / "tracking").exists()
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--report-to", "tensorbord"]) == 2
    assert "--report-to tensorbord: report_to: unknown tracker(s) 'tensorbord'" in capsys.readouterr().err


def test_a_series_stays_bounded_evenly_thinned_and_resumes_to_the_same_series():
    from mtlbench.bench.tracking import SERIES_POINTS, StepSeries

    def scalars(step):
        return {"loss/a": step / 2, "cosine/a|b": float("nan") if step == 30 else 0.5,
                **({"weight/a": 1.0} if step > 300 else {})}

    whole, first = StepSeries(3), StepSeries(3)
    for step in range(3, 6001, 3):
        whole.add(step, scalars(step))
        if step <= 3000:
            first.add(step, scalars(step))
    resumed = StepSeries(0, json.loads(json.dumps(first.to_dict())))  # through a checkpoint
    for step in range(3003, 6001, 3):
        resumed.add(step, scalars(step))
    assert resumed.to_dict() == whole.to_dict()
    assert SERIES_POINTS // 2 < len(whole.steps) <= SERIES_POINTS
    assert whole.steps == list(range(whole.every, 6001, whole.every)) and whole.every % 3 == 0
    assert whole.values["loss/a"] == [s / 2 for s in whole.steps]
    assert whole.values["weight/a"] == [1.0 if s > 300 else None for s in whole.steps]  # not logged yet: None
    short = StepSeries(3)
    for step in range(3, 61, 3):
        short.add(step, scalars(step))
    assert short.steps == list(range(3, 61, 3)) and short.values["cosine/a|b"][9] is None  # NaN kept as None
