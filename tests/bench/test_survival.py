"""Runs survive: kill -9 and resume, Ctrl-C, divergence, workers dying with their parent, two
suites writing into one directory. No clock anywhere: a subprocess is followed by reading its
output line by line, and a worker's death is read from /proc once its parent has been reaped."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mtlbench.bench.cli import main
from mtlbench.bench.records import load_records

from tests.conftest import write_suite

MTLBENCH = str(Path(sys.executable).with_name("mtlbench"))
NO_COST = "[cost]\nenabled = false\n"
# The strategies with state: GradVac's targets, uncertainty weighting's learned log-variances,
# FAMO's logits and own optimizer, gradual unfreezing's stage, SMART's noise generator, the
# proportional sampler's generator; LoRA's adapters with Auto-Lambda's weights, own optimizer and
# held-out batch stream.
STATEFUL = (NO_COST
            + '[[recipes]]\nname = "gradvac_gu"\nsampler = "joint"\ncombiner = "gradvac"\n'
              'freezing = "gradual_unfreezing"\nregularizers = ["fgm"]\n'
            + '[[recipes]]\nname = "uw_smart"\nsampler = "joint"\ncombiner = "uw"\n'
              'regularizers = [{ name = "smart", steps = 1 }]\n'
            + '[[recipes]]\nname = "famo"\nsampler = "joint"\ncombiner = "famo"\n'
            + '[[recipes]]\nname = "proportional"\nsampler = "proportional"\n'
            + '[[recipes]]\nname = "lora_autol"\nsampler = "joint"\ncombiner = "auto_lambda"\n'
              'freezing = { name = "lora", rank = 4 }\n')
RUNS = STATEFUL.count("[[recipes]]")  # one seed each
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
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mtlbench: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"mtlbench: error: {out} holds runs made with other settings: "
                                                     "survive.famo-seed0.json (suite.train.epochs: 3 -> 1)")
    assert "--fresh" in errors[0]
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
    _lines_until(process, f"[1/{RUNS}]")  # a run has finished: both workers are up
    workers = _workers(process.pid)
    assert len(workers) == 2
    process.send_signal(signal.SIGKILL)
    process.wait()  # reaped: the kernel has sent the parent-death signal by now
    assert all(_dead_or_dying(pid) for pid in workers), [_proc_status(p).get("State") for p in workers]


def test_ctrl_c_stops_cleanly_keeps_finished_records_and_resumes(stateful_suite, uninterrupted, tmp_path):
    out = tmp_path / "out"
    process = _start(stateful_suite, out, "--jobs", "2")
    _lines_until(process, f"[1/{RUNS}]")
    workers = _workers(process.pid)
    process.send_signal(signal.SIGINT)
    rest = "".join(process.stderr)
    assert process.wait() == 130, rest
    assert "Traceback" not in rest
    assert rest.strip().splitlines()[-1].startswith("mtlbench: interrupted: ")
    assert "run the same command again to resume" in rest
    assert all(_dead_or_dying(pid) for pid in workers)
    kept = _records(out)
    assert 1 <= len(kept) < RUNS and not list(out.rglob("*.tmp"))
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


# --- faults survived: a killed worker, the same command twice, a full disk, broken checkpoints -----

QUICK = (NO_COST + "".join(f'[[recipes]]\nname = "{name}"\nsampler = "{sampler}"\n' for name, sampler in
                           (("joint", "joint"), ("rr", "round_robin"), ("prop", "proportional"), ("uni", "uniform"))))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are found through /proc")
def test_killed_workers_lose_their_runs_only_and_the_same_command_resumes_them(tmp_path, capsys):
    """Both workers killed while the pool runs: the runs they held are reported lost (signal 9),
    new workers take the runs still waiting, the others land, the command exits 1; run again, it
    trains the lost ones."""
    import os

    suite = write_suite(tmp_path / "quick.toml", QUICK, train="epochs = 2\nbatch_size = 16\nlr = 2e-3", name="quick")
    out = tmp_path / "out"
    process = _start(suite, out, "--jobs", "2")
    seen = _lines_until(process, "[1/4]")  # each worker holds a run, or is about to be given one
    for worker in _workers(process.pid):
        os.kill(worker, signal.SIGKILL)
    seen += list(process.stderr)
    log = "".join(seen)
    assert process.wait() == 1, log
    assert "its worker process ended (signal 9 (SIGKILL)); the other runs go on" in log and "Traceback" not in log
    last = log.strip().splitlines()[-1]
    lost = int(last.removeprefix("mtlbench: ").split()[0])
    assert 1 <= lost <= 2 and " lost: " in last and "run the same command again to resume" in last, last
    assert len(_records(out)) == 4 - lost and (out / "table.md").exists()  # the others landed and were rendered
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--jobs", "1"]) == 0
    assert f"{4 - lost} of 4 runs already finished" in capsys.readouterr().err and len(_records(out)) == 4


def test_the_same_command_twice_at_once_trains_each_run_once(stateful_suite, uninterrupted, tmp_path):
    """The second command finds the first's run locked and skips it, trains what is left, and both
    end cleanly with every record there once. The first is stopped (SIGSTOP) while it holds its
    run, so that the two overlap however fast either starts."""
    out, runs = tmp_path / "out", "famo,proportional"
    first = _start(stateful_suite, out, "--jobs", "1", "--recipes", runs)
    first_log = _lines_until(first, "survive.famo-seed0: epoch 1/3 checkpoint saved")
    first.send_signal(signal.SIGSTOP)
    second = _start(stateful_suite, out, "--jobs", "1", "--recipes", runs)
    second_log = "".join(second.stderr)
    assert second.wait() == 0, second_log
    first.send_signal(signal.SIGCONT)
    first_log = "".join(first_log) + "".join(first.stderr)
    assert (first.wait(), second.wait()) == (0, 0), first_log + second_log
    assert "survive.famo-seed0: another process is training it; skipped" in second_log, second_log
    assert "Traceback" not in first_log + second_log
    found = _records(out)
    assert sorted(found) == ["survive.famo-seed0", "survive.proportional-seed0"]
    for run_id, record in found.items():
        assert record["history"] == uninterrupted[run_id]["history"]


def _limited_file_size(limit: int):
    """For a child process: files may not grow past `limit` bytes, as on a full disk (the write
    fails with EFBIG instead of the process being killed by SIGXFSZ)."""
    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_resumable(stateful_suite, uninterrupted, tmp_path):
    """A checkpoint's weights (about 140 kB here) cannot be written past a 100 kB file limit: one
    line naming the checkpoint and the way out, nothing half-written; then the same command, with
    room, trains the run to the record it would have had."""
    out = tmp_path / "out"
    process = subprocess.run([MTLBENCH, "run", str(stateful_suite), "--recipes", "famo", "--out", str(out),
                              "--no-progress"], capture_output=True, text=True, check=False,
                             preexec_fn=_limited_file_size(100_000))
    assert process.returncode == 2, process.stderr
    last = process.stderr.strip().splitlines()[-1]
    assert last == (f"mtlbench: error: {out}/checkpoints/survive.famo-seed0/epoch-0001: cannot write (File too large); "
                    "free some space, then run the same command again to resume"), process.stderr
    assert "Traceback" not in process.stderr
    assert not list(out.rglob("*.tmp*")) and not list((out / "checkpoints" / "survive.famo-seed0").iterdir())
    assert main(["run", str(stateful_suite), "--recipes", "famo", "--out", str(out), "--no-progress"]) == 0
    assert _records(out)["survive.famo-seed0"]["history"] == uninterrupted["survive.famo-seed0"]["history"]


def _break(checkpoint: Path, how: str) -> None:
    from safetensors.torch import load_file, save_file

    if how == "truncated state":
        data = (checkpoint / "state.pt").read_bytes()
        (checkpoint / "state.pt").write_bytes(data[:len(data) // 2])
    elif how == "garbage weights":
        size = (checkpoint / "model.safetensors").stat().st_size
        (checkpoint / "model.safetensors").write_bytes(bytes(range(256)) * (size // 256))
    else:  # another architecture's weights, with a manifest that matches them: only loading can tell
        from mtlbench.bench.checkpoint import MANIFEST, _digest

        weights = load_file(str(checkpoint / "model.safetensors"))
        weights["encoder.extra_layer.weight"] = weights.pop(min(weights))
        save_file(weights, str(checkpoint / "model.safetensors"))
        manifest = json.loads((checkpoint / MANIFEST).read_text())
        manifest["files"]["model.safetensors"] = _digest(checkpoint / "model.safetensors")
        (checkpoint / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def interrupted_after_epoch_2(stateful_suite, tmp_path_factory):
    """FAMO's run killed after its epoch-2 checkpoint, with the last two epochs kept."""
    folder = tmp_path_factory.mktemp("interrupted")
    suite = folder / "keep.toml"
    suite.write_text(stateful_suite.read_text().replace("[cost]", "[checkpoints]\nkeep = 2\n[cost]", 1))
    process = _start(suite, folder / "out", "--recipes", "famo")
    _lines_until(process, "survive.famo-seed0: epoch 2/3 checkpoint saved")
    process.send_signal(signal.SIGKILL)
    process.wait()
    return suite, folder / "out"


@pytest.mark.parametrize("keep, how", [(2, "truncated state"), (2, "garbage weights"), (2, "other architecture"),
                                       (1, "other architecture")])
def test_a_broken_checkpoint_is_set_aside_and_the_run_resumes_before_it_or_afresh(
        keep, how, interrupted_after_epoch_2, uninterrupted, tmp_path, capsys):
    import shutil

    suite, interrupted = interrupted_after_epoch_2
    out, run_id = tmp_path / "out", "survive.famo-seed0"
    shutil.copytree(interrupted, out)
    saved = out / "checkpoints" / run_id
    assert sorted(p.name for p in saved.iterdir()) == ["epoch-0001", "epoch-0002"]
    if keep == 1:
        shutil.rmtree(saved / "epoch-0001")
    _break(saved / "epoch-0002", how)
    assert main(["run", str(suite), "--recipes", "famo", "--out", str(out), "--no-progress"]) == 0
    log = capsys.readouterr().err
    assert f"{run_id}: {saved / 'epoch-0002'}: " in log and "set aside as broken-epoch-0002" in log
    assert ("resuming after epoch 1" if keep == 2 else "no checkpoint left to resume from; starting the run afresh") \
        in log
    assert (saved / "broken-epoch-0002").is_dir()
    assert _records(out)[run_id]["history"] == uninterrupted[run_id]["history"]


def test_temporaries_of_a_killed_write_are_removed_by_the_next_run_and_a_live_writer_s_kept(
        stateful_suite, uninterrupted, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(stateful_suite), "--recipes", "famo", "--out", str(out), "--no-progress"]) == 0
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead = int(gone.stdout)  # a pid no process has now
    strays = [out / f".table.md.{dead}-x1.tmp", out / f".survive.famo-seed0.json.{dead}-x2.tmp",
              out / f".heatmap.png.{dead}-x3.tmp.png", out / "checkpoints" / f".epoch-0003.{dead}-x4.tmp"]
    for stray in strays:
        stray.write_text("half")
    live = out / f".table.csv.{__import__('os').getpid()}-x5.tmp"  # this process: still writing, as it were
    live.write_text("half")
    capsys.readouterr()
    assert main(["run", str(stateful_suite), "--recipes", "famo", "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert not any(stray.exists() for stray in strays) and live.exists()
    assert "removed .table.md." in err and "left by a write that was killed" in err
