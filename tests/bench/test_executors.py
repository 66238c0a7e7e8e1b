"""Where a suite's runs execute: local worker processes, Ray tasks, or shards of a job array. The
records must not depend on it."""

from __future__ import annotations

import json
import re

import pytest
from mtlbench.bench.cli import main

from tests.conftest import write_suite

RECIPES = ("[cost]\nenabled = false\n"
           '[[recipes]]\nname = "rr"\nsampler = "round_robin"\n'
           '[[recipes]]\nname = "pc"\nsampler = "joint"\ncombiner = "pcgrad"\n')


@pytest.fixture(scope="module")
def grid_suite(tmp_path_factory):
    """A 2 recipes x 2 seeds suite, and its records from a local run in two worker processes."""
    folder = tmp_path_factory.mktemp("grid")
    suite = write_suite(folder / "grid.toml", name="grid", recipes=RECIPES)
    assert main(["run", str(suite), "--out", str(folder / "local"), "--seeds", "2", "--no-progress",
                 "--jobs", "2"]) == 0
    return suite, _records(folder / "local")


def _records(directory) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(directory.glob("grid.*.json"))}


def _quality_columns(markdown: str) -> list[list[str]]:
    """The recipe and metric columns of a printed table (up to `overall`)."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("|")]
    end = rows[0].index("overall") + 1
    return [row[:end] for row in rows]


def _same_results(found: dict, expected: dict) -> None:
    assert sorted(found) == sorted(expected)
    for run_id, record in found.items():
        assert record["metrics"] == expected[run_id]["metrics"], run_id
        assert record["history"] == expected[run_id]["history"], run_id
        assert record["config_hash"] == expected[run_id]["config_hash"], run_id


def test_two_shards_together_are_the_whole_grid_and_table_merges_them(grid_suite, tmp_path, capsys):
    suite, whole = grid_suite
    for index in (0, 1):
        assert main(["run", str(suite), "--out", str(tmp_path / f"shard{index}"), "--seeds", "2", "--no-progress",
                     "--shard", f"{index}/2"]) == 0
    first, second = _records(tmp_path / "shard0"), _records(tmp_path / "shard1")
    assert len(first) == len(second) == 2 and not set(first) & set(second)
    assert {r["recipe_name"] for r in first.values()} == {"rr", "pc"}  # every n-th: a mix of recipes
    _same_results({**first, **second}, whole)
    capsys.readouterr()
    assert main(["table", str(tmp_path / "shard0"), str(tmp_path / "shard1")]) == 0
    merged = _quality_columns(capsys.readouterr().out)
    assert main(["table", str(suite.parent / "local")]) == 0
    assert merged == _quality_columns(capsys.readouterr().out)  # cost and speed columns differ run to run
    # a shard run again finds its runs finished
    assert main(["run", str(suite), "--out", str(tmp_path / "shard1"), "--seeds", "2", "--no-progress",
                 "--shard", "1/2"]) == 0
    assert "2 of 2 runs already finished" in capsys.readouterr().err


@pytest.mark.parametrize("arguments, message", [
    (["--shard", "2/2"], "--shard 2/2: need 0 <= I < N"),
    (["--shard", "half"], "--shard half: expected I/N"),
    (["--address", "auto"], "--address: the address of a Ray cluster, for --executor ray"),
    (["--executor", "ray", "--jobs", "2"], "--executor ray schedules runs by their resource requests"),
])
def test_bad_executor_arguments_are_named(arguments, message, grid_suite, tmp_path, capsys):
    assert main(["run", str(grid_suite[0]), "--out", str(tmp_path / "out"), *arguments]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_run_found_in_two_directories_is_an_error_naming_both(grid_suite, tmp_path, capsys):
    local = grid_suite[0].parent / "local"
    assert main(["table", str(local), str(local)]) == 2
    assert "the same run as" in capsys.readouterr().err


def test_the_ray_executor_gives_the_records_of_a_local_run(grid_suite, tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'mtlbench[ray]'")
    suite, whole = grid_suite
    out = tmp_path / "ray"
    monkeypatch.setenv("MTLBENCH_STATUS_SECONDS", "0")  # not a terminal: the tasks' progress as status lines
    assert main(["run", str(suite), "--out", str(out), "--seeds", "2", "--executor", "ray"]) == 0
    err = capsys.readouterr().err
    assert "4 runs as Ray tasks (1 CPU each)" in err
    # the tasks' steps reach the driver: some line shows a run part-way or at its last step
    assert re.search(r"^progress: \d\.\d of 4 runs.*; running: (rr|pc) seed [01] \d+%", err, re.MULTILINE), err
    _same_results(_records(out), whole)
    assert (out / "table.md").exists() and not list(out.rglob("*.tmp"))
    # resumes like a local run: one record removed, one run trained again
    (out / "grid.pc-seed1.json").unlink()
    assert main(["run", str(suite), "--out", str(out), "--seeds", "2", "--no-progress", "--executor", "ray"]) == 0
    assert "3 of 4 runs already finished" in capsys.readouterr().err
    _same_results(_records(out), whole)


def _context(tmp_path, suite, world: int = 1):
    """A SuiteContext as torchrun's rank 0 of `world` would see it (no process group is joined)."""
    from mtlbench.bench.context import SuiteContext
    from mtlbench.bench.parallel import Ranks

    context = SuiteContext(suite, tmp_path)
    context.ranks = Ranks(0, world)
    return context


@pytest.mark.parametrize("name, jobs, runs, world, chosen", [
    ("local", 1, 4, 1, "inline"), ("local", 2, 4, 1, "pool"), ("local", 2, 1, 1, "inline"),
    ("local", None, 4, 2, "torchrun"), ("inline", None, 4, 1, "inline"), ("pool", 2, 4, 1, "pool"),
    ("ray", None, 4, 1, "ray"),
])
def test_the_executor_chosen_from_the_one_table(name, jobs, runs, world, chosen, grid_suite, tmp_path):
    from mtlbench.bench import executors
    from mtlbench.bench.config import load_suite

    suite = load_suite(str(grid_suite[0]))
    executors.check_arguments(name, jobs, None, world)
    todo = [(suite.recipes[0], seed) for seed in range(runs)]
    executor = executors.choose(name, _context(tmp_path, suite, world), todo, jobs)
    assert executor.name == chosen and type(executor) is executors.EXECUTORS[chosen]
    assert executors.CHOICES == ("local", *executors.EXECUTORS) and set(executors.EXECUTORS) == {
        "inline", "pool", "ray", "torchrun"}


@pytest.mark.parametrize("name, jobs, address, world, message", [
    ("inline", 2, None, 1, "--jobs 2: --executor inline trains one run at a time in this process"),
    ("torchrun", None, None, 1, "--executor torchrun: start the command with torchrun"),
    ("local", 2, None, 4, "--jobs 2: under torchrun the 4 processes train one run at a time together"),
    ("pool", 2, None, 2, "--executor pool: under torchrun every process trains each run together"),
    ("ray", None, None, 2, "--executor ray schedules runs by their resource requests"),
    ("pool", None, "auto", 1, "--address: the address of a Ray cluster, for --executor ray"),
    ("rays", None, None, 1, "--executor: unknown executor 'rays' (did you mean 'ray'?)"),
])
def test_an_executor_refuses_the_options_it_does_not_take(name, jobs, address, world, message):
    from mtlbench.bench import executors
    from mtlbench.tasks.errors import UserError

    with pytest.raises(UserError) as error:
        executors.check_arguments(name, jobs, address, world)
    assert message in str(error.value)


def test_the_inline_executor_trains_in_this_process(grid_suite, tmp_path, capsys, monkeypatch):
    suite, whole = grid_suite
    monkeypatch.setenv("MTLBENCH_STATUS_SECONDS", "0")  # not a terminal: the suite's progress as status lines
    assert main(["run", str(suite), "--out", str(tmp_path / "inline"), "--seeds", "2", "--executor", "inline"]) == 0
    err = capsys.readouterr().err
    assert "[4/4] pc seed 1" in err and "worker processes" not in err
    assert re.search(r"^progress: [34]\.\d of 4 runs, about \d+( min \d\d)? s left; running: pc seed 1 100%$",
                     err, re.MULTILINE), err  # the last step is always reported
    _same_results(_records(tmp_path / "inline"), whole)


@pytest.mark.parametrize(("environment", "cores", "runs", "expected"), [
    (None, 2, 4, 2), (None, 8, 3, 3), (None, 1, 4, 1),  # one run per core, no more than there are runs
    ("1", 8, 4, 1), ("3", 2, 4, 3), ("6", 2, 4, 4),  # MTLBENCH_JOBS replaces the count of cores
])
def test_the_default_jobs_are_the_cores_or_mtlbench_jobs(environment, cores, runs, expected, monkeypatch):
    from types import SimpleNamespace

    import torch
    from mtlbench.bench import executors
    from mtlbench.bench.config import load_suite

    if environment is None:
        monkeypatch.delenv("MTLBENCH_JOBS", raising=False)
    else:
        monkeypatch.setenv("MTLBENCH_JOBS", environment)
    monkeypatch.setattr(executors.os, "sched_getaffinity", lambda pid: set(range(cores)))
    context = SimpleNamespace(device=torch.device("cpu"), suite=load_suite("ci"))
    assert context.suite.train.threads == 1
    assert executors.default_jobs(context, runs) == expected
