"""Runs survive: kill -9 and resume, Ctrl-C, divergence, workers dying with their parent, two
suites writing into one directory. No clock anywhere: a subprocess is followed by reading its
output line by line, and a worker's death is read from /proc once its parent has been reaped."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.records import load_records
from tests.conftest import write_suite

MTLBENCH = str(Path(sys.executable).with_name("mtlbench"))
NO_COST = "[cost]\nenabled = false\n"
# The strategies with state: GradVac's targets, uncertainty weighting's learned log-variances,
# FAMO's logits and own optimizer, gradual unfreezing's stage, SMART's noise generator, the
# proportional sampler's generator.
STATEFUL = (NO_COST
            + '[[recipes]]\nname = "gradvac_gu"\nsampler = "joint"\ncombiner = "gradvac"\n'
              'freezing = "gradual_unfreezing"\nregularizers = ["fgm"]\n'
            + '[[recipes]]\nname = "uw_smart"\nsampler = "joint"\ncombiner = "uw"\n'
              'regularizers = [{ name = "smart", steps = 1 }]\n'
            + '[[recipes]]\nname = "famo"\nsampler = "joint"\ncombiner = "famo"\n'
            + '[[recipes]]\nname = "proportional"\nsampler = "proportional"\n')
COMPARED = ("metrics", "best", "overall", "history", "strategies", "seed", "config")


def _lines_until(process: subprocess.Popen, wanted: str) -> list[str]:
    """stderr lines up to the first holding `wanted` (fails if the process ends first)."""
    seen = []
    for line in process.stderr:
        seen.append(line)
        if wanted in line:
            return seen
    process.wait()
    raise AssertionError(f"the run ended (exit {process.returncode}) before printing {wanted!r}:\n" + "".join(seen))


def _start(suite: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([MTLBENCH, "run", str(suite), "--out", str(out), "--no-progress", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _records(out: Path) -> dict[str, dict]:
    """Each record as written (its JSON object), by run id."""
    return {r.run_id: r.to_dict() for r in load_records(out)}


@pytest.fixture(scope="module")
def stateful_suite(tmp_path_factory):
    return write_suite(tmp_path_factory.mktemp("stateful") / "survive.toml", STATEFUL,
                       train="epochs = 3\nbatch_size = 16\nlr = 2e-3", name="survive")


@pytest.fixture(scope="module")
def uninterrupted(stateful_suite, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    assert main(["run", str(stateful_suite), "--out", str(out), "--no-progress", "--jobs", "1"]) == 0
    return _records(out)


def test_a_run_killed_in_epoch_2_resumes_to_the_same_record(stateful_suite, uninterrupted, tmp_path):
    """kill -9 during epoch 2 of 3 of each stateful run in turn, then the same command again."""
    out, logs = tmp_path / "out", []
    in_suite_order = sorted(uninterrupted, key=lambda run_id: uninterrupted[run_id]["recipe_index"])
    for run_id in in_suite_order:  # each command resumes the run killed before, then is killed in the next
        process = _start(stateful_suite, out, "--jobs", "1")
        logs += _lines_until(process, f"{run_id}: epoch 1/3 checkpoint saved")
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not (out / f"{run_id}.json").exists()  # no record of an unfinished run
    process = _start(stateful_suite, out, "--jobs", "1")
    logs += list(process.stderr)
    assert process.wait() == 0, "".join(logs)
    for run_id in in_suite_order:
        assert f"{run_id}: resuming after epoch 1" in "".join(logs)
    resumed = _records(out)
    assert resumed.keys() == uninterrupted.keys()
    for run_id, record in resumed.items():
        for key in COMPARED:
            assert record[key] == uninterrupted[run_id][key], (run_id, key)
        assert record["train"]["resumed_from_epoch"] >= 1
    assert not list(out.rglob("*.tmp"))


def test_a_finished_run_is_kept_and_other_settings_are_refused(stateful_suite, uninterrupted, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(stateful_suite), "--recipes", "famo", "--out", str(out), "--no-progress"]) == 0
    before = (out / "survive.famo-seed0.json").read_text()
    capsys.readouterr()
    assert main(["run", str(stateful_suite), "--recipes", "famo", "--out", str(out), "--no-progress"]) == 0
    assert "1 of 1 runs already finished" in capsys.readouterr().err
    assert (out / "survive.famo-seed0.json").read_text() == before  # not retrained
    assert main(["run", str(stateful_suite), "--recipes", "famo", "--epochs", "1", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"mtlbench: error: {out} holds runs made with other settings: survive.famo-seed0.json "
                            "(suite.train.epochs: 3 -> 1)") and "--fresh" in error and "\n" not in error
    assert (out / "survive.famo-seed0.json").read_text() == before
    assert main(["run", str(stateful_suite), "--recipes", "famo", "--epochs", "1", "--fresh", "--out", str(out),
                 "--no-progress"]) == 0
    assert json.loads((out / "survive.famo-seed0.json").read_text())["config"]["suite"]["train"]["epochs"] == 1


def _proc_status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _dead_or_dying(pid: int) -> bool:
    """Gone, a zombie, or with SIGKILL pending: a fact at the moment of asking, not a wait."""
    found = _proc_status(pid)
    if not found or found["State"][0] in "ZX":
        return True
    kill = 1 << (signal.SIGKILL - 1)
    return bool(int(found.get("SigPnd", "0"), 16) & kill or int(found.get("ShdPnd", "0"), 16) & kill)


def _workers(pid: int) -> list[int]:
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in command:  # not the resource tracker
            workers.append(int(stat.parent.name))
    return workers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_worker_processes_die_with_the_killed_parent(stateful_suite, tmp_path):
    process = _start(stateful_suite, tmp_path / "out", "--jobs", "2")
    _lines_until(process, "[1/4]")  # a run has finished: both workers are up
    workers = _workers(process.pid)
    assert len(workers) == 2
    process.send_signal(signal.SIGKILL)
    process.wait()  # reaped: the kernel has sent the parent-death signal by now
    assert all(_dead_or_dying(pid) for pid in workers), [_proc_status(p).get("State") for p in workers]


def test_ctrl_c_stops_cleanly_keeps_finished_records_and_resumes(stateful_suite, uninterrupted, tmp_path):
    out = tmp_path / "out"
    process = _start(stateful_suite, out, "--jobs", "2")
    _lines_until(process, "[1/4]")
    workers = _workers(process.pid)
    process.send_signal(signal.SIGINT)
    rest = "".join(process.stderr)
    assert process.wait() == 130, rest
    assert "Traceback" not in rest
    assert rest.strip().splitlines()[-1].startswith("mtlbench: interrupted: ")
    assert "run the same command again to resume" in rest
    assert all(_dead_or_dying(pid) for pid in workers)
    kept = _records(out)
    assert 1 <= len(kept) < 4 and not list(out.rglob("*.tmp"))
    for run_id, record in kept.items():
        assert record["metrics"] == uninterrupted[run_id]["metrics"]
    assert main(["run", str(stateful_suite), "--out", str(out), "--no-progress", "--jobs", "2"]) == 0
    for run_id, record in _records(out).items():
        assert record["history"] == uninterrupted[run_id]["history"]


def test_a_diverged_run_is_recorded_as_such_and_the_suite_goes_on(tmp_path, capsys):
    suite = write_suite(tmp_path / "diverge.toml", name="diverge", recipes=NO_COST + '[[recipes]]\nname = "ok"\nsampler = "joint"\n'
                        '[[recipes]]\nname = "boom"\nsampler = "joint"\n'
                        'regularizers = [{ name = "fgm", epsilon = 1e30 }]\n')
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--seeds", "2", "--jobs", "1"]) == 0
    captured = capsys.readouterr()
    assert "boom seed 0 diverged: non-finite" in captured.err and "at task 'sst', epoch 1, step 1" in captured.err
    records = _records(out)
    boom = records["diverge.boom-seed0"]
    assert boom["status"] == "diverged" and "metrics" not in boom
    assert boom["diverged"] == {"what": boom["diverged"]["what"], "task": "sst", "epoch": 1, "step": 1}
    assert records["diverge.ok-seed1"]["status"] == "finished"
    row = next(line for line in captured.out.splitlines() if line.startswith("| boom"))
    assert "diverged" in row and "0 (+2 diverged)" in row and "nan" not in row.lower()
    assert main(["table", str(out)]) == 0  # re-rendering reads diverged records too


def test_a_learning_rate_that_explodes_diverges_every_run_without_made_up_numbers(tmp_path, capsys):
    suite = write_suite(tmp_path / "lr.toml", NO_COST + '[[recipes]]\nname = "sum"\nsampler = "joint"\n',
                        train="epochs = 2\nbatch_size = 16\nlr = 1e6", name="lr")
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--jobs", "1"]) == 0
    record = _records(out)["lr.sum-seed0"]
    assert record["status"] == "diverged" and record["diverged"]["step"] >= 1
    assert "every run diverged" in capsys.readouterr().err


def test_two_suites_writing_into_one_directory_at_once_lose_nothing(tmp_path):
    recipes = NO_COST + '[[recipes]]\nname = "sum"\nsampler = "joint"\n[[recipes]]\nname = "rr"\nsampler = "round_robin"\n'
    first = write_suite(tmp_path / "first.toml", recipes, name="first")
    second = write_suite(tmp_path / "second.toml", recipes, name="second")
    out = tmp_path / "shared"
    processes = [_start(path, out, "--jobs", "1") for path in (first, second)]
    logs = ["".join(p.stderr) for p in processes]
    assert [p.wait() for p in processes] == [0, 0], logs
    assert sorted(_records(out)) == ["first.rr-seed0", "first.sum-seed0", "second.rr-seed0", "second.sum-seed0"]
    table = (out / "table.md").read_text()
    for row in ("first/sum", "first/rr", "second/sum", "second/rr"):
        assert f"| {row}" in table
