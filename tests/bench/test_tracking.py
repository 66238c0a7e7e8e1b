"""Live scalars in the trackers: TensorBoard's own reader and the CSV hold every scalar for every
logged step; a run killed after an epoch and resumed continues one series with no step twice;
logging off reads nothing and writes nothing."""

import csv
import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bench.cli import main
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


def test_a_killed_run_resumed_continues_one_series_without_a_step_twice(suite, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "out"
    command = [MTLBENCH, "run", str(suite), "--out", str(out), "--no-progress", "--report-to", "csv,tensorboard"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "epoch 1/2 checkpoint saved" in line:
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert subprocess.run(command, check=False, capture_output=True, text=True).returncode == 0
    steps = json.loads((out / "track.pcgrad-seed0.json").read_text())["train"]["steps"]
    logged = list(range(2, steps + 1, 2))
    assert [s for s, _ in tensorboard_scalars(out)["loss/sst"]] == logged
    assert [s for s, n, _ in csv_rows(out) if n == "loss/sst"] == logged


def test_without_report_to_nothing_is_written(suite, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--no-progress"]) == 0
    assert not (out / "tracking").exists()
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--report-to", "tensorbord"]) == 2
    assert "--report-to tensorbord: report_to: unknown tracker(s) 'tensorbord'" in capsys.readouterr().err
