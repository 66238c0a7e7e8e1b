"""Ctrl-C / SIGTERM stops a suite whatever a step costs (issue 26): a step is made to block until the
test releases it (never), with a queue of 3 runs on 2 workers. After SIGTERM no further run starts,
every worker is gone and the parent has exited 130 with its one line printed last: at once when the
step can be interrupted, after the grace period (MTLBENCH_STOP_GRACE) when it cannot; a second
interrupt kills at once. The same command afterwards gives the uninterrupted records. No clock:
the test follows the output line by line and reads processes from /proc."""

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mtlbench.bench.records import load_records

from tests.bench.test_survival import _dead_or_dying, _workers
from tests.conftest import write_suite

MTLBENCH = str(Path(sys.executable).with_name("mtlbench"))
RECIPES = "[cost]\nenabled = false\n" + "".join(
    f'[[recipes]]\nname = "{name}"\nsampler = "joint"\ncombiner = "blocking_sum"\n' for name in ("one", "two", "three"))
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are found through /proc")


@pytest.fixture(scope="module")
def blocking(tmp_path_factory):
    """A suite of three runs of the blocking combiner, and the environment that finds it: an entry
    point in a dist-info folder on PYTHONPATH, as an installed plugin would have."""
    folder = tmp_path_factory.mktemp("interrupt")
    info = folder / "site" / "mtlbench_test_blocking-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mtlbench-test-blocking\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[mtlbench.strategies]\nblocking = tests.support.blocking\n")
    root = Path(__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder / "site"), str(root)])}
    suite = write_suite(folder / "interrupt.toml", RECIPES, name="interrupt")
    return suite, env, folder


def _interrupted(blocking, tmp_path, grace: str, uninterruptible: str, second: bool = False,
                 executor: tuple[str, ...] = ("--jobs", "2"), launcher: tuple[str, ...] = (MTLBENCH,)):
    suite, env, _ = blocking
    out = tmp_path / "out"
    env = {**env, "MTLBENCH_TEST_BLOCK": str(tmp_path / "never"), "MTLBENCH_TEST_BLOCK_UNINTERRUPTIBLE": uninterruptible,
           "MTLBENCH_STOP_GRACE": grace}
    fifo = tmp_path / "blocked"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    keep_open = os.open(fifo, os.O_WRONLY)  # so that the reader never sees an end between two writers
    env["MTLBENCH_TEST_BLOCK_NOTIFY"] = str(fifo)
    process = subprocess.Popen([*launcher, "run", str(suite), "--out", str(out), "--no-progress", *executor],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    seen, notes = [], b""
    while notes.count(b"blocked ") < 2:  # both workers blocked in their first run's first step; the third waits
        ready, _, _ = select.select([reader], [], [], 600)  # a guard against a hang, not a measurement
        assert ready and process.poll() is None, process.stderr.read()
        notes += os.read(reader, 4096)
    os.close(keep_open)
    os.close(reader)
    workers = (_workers(process.pid) or _children(process.pid, b"mtlbench.bench.cli")  # pool, torchrun
               or _processes_named(b"_run_remote", tmp_path))  # Ray's task workers
    locks_before = sorted(p.name for p in out.rglob("*.lock"))
    process.send_signal(signal.SIGTERM)
    rest = []
    if second:  # once the parent waits for its workers
        for line in process.stderr:
            rest.append(line)
            if "interrupt again to kill them now" in line:
                break
        process.send_signal(signal.SIGINT)
    for line in process.stderr:
        rest.append(line)
        if line.startswith("mtlbench: interrupted") and launcher == (MTLBENCH,):  # printed once the workers are gone
            assert all(_dead_or_dying(pid) for pid in workers) and not _processes_named(b"_run_remote", tmp_path), rest
    rest = "".join(rest)
    code = process.wait(timeout=300)  # a guard against a hang, not a measurement
    return code, "".join(seen) + rest, rest, workers, locks_before, out


def _children(parent: int, part: bytes) -> list[int]:
    """The processes `parent` started whose command line holds `part` (torchrun's ranks)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent and part in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
        except OSError:
            continue
    return found


def _processes_named(part: bytes, tmp_path: Path) -> list[int]:
    """This test's processes whose command line holds `part` (Ray names its task workers
    ray::FUNCTION): those whose environment names the test's own folder, as the command's did, so
    that a test running beside it (pytest -n) is not counted."""
    found, mark = [], f"MTLBENCH_TEST_BLOCK={tmp_path / 'never'}".encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if part in cmdline.read_bytes() and mark in (cmdline.parent / "environ").read_bytes().split(b"\0"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize(("uninterruptible", "grace", "second"), [("0", "600", False), ("1", "2", False),
                                                                  ("1", "600", True)],
                         ids=["interruptible step", "step holding SIGTERM: killed after the grace",
                              "second interrupt kills at once"])
def test_sigterm_stops_the_suite_whatever_a_step_costs(blocking, tmp_path, uninterruptible, grace, second):
    code, log, rest, workers, locks_before, out = _interrupted(blocking, tmp_path, grace, uninterruptible, second)
    assert code == 130, log
    assert len(workers) == 2 and all(_dead_or_dying(pid) for pid in workers)
    lines = rest.strip().splitlines()
    assert lines[-1].startswith("mtlbench: interrupted: 0 of 3 runs finished this time"), log
    assert "Traceback" not in log
    assert not list(out.glob("*.json")) and not list(out.rglob("*.tmp"))
    assert sorted(p.name for p in out.rglob("*.lock")) == locks_before  # the third run never started
    assert "interrupt.three" not in log
    killed = "killed 2 worker(s) still running after the interrupt" in log
    assert killed == (uninterruptible == "1"), log  # a step that can be interrupted is, at once
    assert ("second interrupt: killing the workers now" in log) == second, log


def test_under_ray_sigterm_cancels_the_queued_run_and_kills_the_running_ones(blocking, tmp_path):
    pytest.importorskip("ray")
    code, log, rest, workers, locks_before, out = _interrupted(blocking, tmp_path, "600", "1",
                                                               executor=("--executor", "ray"))
    assert code == 130, log
    assert len(workers) == 2 and all(_dead_or_dying(pid) for pid in workers), log  # the two blocked runs, killed
    assert rest.strip().splitlines()[-1].startswith("mtlbench: interrupted: 0 of 3 runs finished this time"), log
    assert not _processes_named(b"_run_remote", tmp_path)
    assert not list(out.glob("*.json")) and not list(out.rglob("*.tmp"))
    assert sorted(p.name for p in out.rglob("*.lock")) == locks_before  # the third run never started
    suite, env, _ = blocking  # the same command afterwards: the records of an uninterrupted (local) run
    command = [MTLBENCH, "run", str(suite), "--no-progress"]
    again = subprocess.run([*command, "--out", str(out), "--executor", "ray"], check=False, env=env, capture_output=True)
    assert again.returncode == 0, again.stderr[-2000:]
    whole = subprocess.run([*command, "--out", str(tmp_path / "whole"), "--jobs", "1"], check=False, env=env,
                           capture_output=True)
    assert whole.returncode == 0
    resumed = {r.run_id: r.history for r in load_records(out)}
    assert resumed == {r.run_id: r.history for r in load_records(tmp_path / "whole")} and len(resumed) == 3


def test_under_torchrun_sigterm_stops_both_ranks_within_the_step(blocking, tmp_path):
    """torchrun passes SIGTERM to each rank (and kills a rank after its own grace); both ranks stop
    in the blocked step, rank 0 alone says so, no next run starts. torchrun's exit status and its
    own report of the signal are torchrun's."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    code, log, _, ranks, locks_before, out = _interrupted(
        blocking, tmp_path, "600", "0", executor=(), launcher=(torchrun, "--standalone", "--nproc-per-node", "2",
                                                                "-m", "mtlbench.bench.cli"))
    assert code != 0 and len(ranks) == 2 and all(_dead_or_dying(pid) for pid in ranks), log
    assert log.count("mtlbench: interrupted: 0 of 3 runs finished this time") == 1, log
    assert not list(out.glob("*.json")) and not list(out.rglob("*.tmp"))
    assert sorted(p.name for p in out.rglob("*.lock")) == locks_before  # the next run never started
    suite, env, _ = blocking  # the same launch afterwards: the records of an uninterrupted launch
    launch = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "mtlbench.bench.cli", "run", str(suite), "--no-progress"]
    for folder in (out, tmp_path / "whole"):
        done = subprocess.run([*launch, "--out", str(folder)], check=False, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    resumed = {r.run_id: r.history for r in load_records(out)}
    assert resumed == {r.run_id: r.history for r in load_records(tmp_path / "whole")} and len(resumed) == 3


def test_the_same_command_afterwards_gives_the_uninterrupted_records(blocking, tmp_path):
    suite, env, _ = blocking
    _, _, _, _, _, out = _interrupted(blocking, tmp_path, "2", "1")
    command = [MTLBENCH, "run", str(suite), "--no-progress", "--jobs", "2"]
    assert subprocess.run([*command, "--out", str(out)], check=False, env=env, capture_output=True).returncode == 0
    whole_run = subprocess.run([*command, "--out", str(tmp_path / "whole")], check=False, env=env, capture_output=True)
    assert whole_run.returncode == 0
    resumed = {r.run_id: r.to_dict() for r in load_records(out)}
    whole = {r.run_id: r.to_dict() for r in load_records(tmp_path / "whole")}
    assert sorted(resumed) == ["interrupt.one-seed0", "interrupt.three-seed0", "interrupt.two-seed0"]
    for run_id, record in whole.items():
        assert json.dumps(resumed[run_id]["history"]) == json.dumps(record["history"])
