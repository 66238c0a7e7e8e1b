"""End to end on a tiny suite, through the same entry point users call."""

import json
import os
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from mtlbench.bench.cli import main
from mtlbench.strategies import registry
from mtlbench.strategies.base import Regularizer

from tests.conftest import write_suite

RECIPES = ('[[recipes]]\nname = "rr"\nsampler = "round_robin"\n'
           '[[recipes]]\nname = "joint"\nsampler = "joint"\ncombiner = "sum"\n')


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory):
    return write_suite(tmp_path_factory.mktemp("suite") / "tiny.toml", RECIPES)


FIRST_RUN_LOG = {}


@pytest.fixture(scope="module")
def first_run(suite_file, tmp_path_factory):
    """Two runs in two worker processes; not a terminal, so the progress is a status line, here
    at every report (MTLBENCH_STATUS_SECONDS=0)."""
    import contextlib
    import io

    out, log = tmp_path_factory.mktemp("run"), io.StringIO()
    previous = os.environ.get("MTLBENCH_STATUS_SECONDS")
    os.environ["MTLBENCH_STATUS_SECONDS"] = "0"
    try:
        with contextlib.redirect_stderr(log):
            assert main(["run", str(suite_file), "--out", str(out), "--jobs", "2"]) == 0
    finally:
        os.environ.pop("MTLBENCH_STATUS_SECONDS") if previous is None else os.environ.update(
            MTLBENCH_STATUS_SECONDS=previous)
    FIRST_RUN_LOG["stderr"] = log.getvalue()
    return out


def test_workers_report_progress_and_the_suite_an_eta(first_run):
    lines = [line for line in FIRST_RUN_LOG["stderr"].splitlines() if line.startswith("progress: ")]
    assert any(re.fullmatch(r"progress: \d\.\d of 2 runs, about \d+( min \d\d)? s left; running: "
                            r"(rr|joint) seed 0 \d+%(, (rr|joint) seed 0 \d+%)?", line) for line in lines), lines
    assert any("rr seed 0 100%" in line for line in lines)  # the last step is always reported


def test_run_writes_records_tables_and_plots(first_run, capsys):
    names = sorted(p.name for p in first_run.iterdir())
    assert names == ["checkpoints", "gradient_conflicts.png", "heatmap.png", "metrics.png", "quality_vs_cost.png",
                     "table.csv", "table.md",
                     "table.tex", "tiny-test.joint-seed0.examples.safetensors", "tiny-test.joint-seed0.json",
                     "tiny-test.rr-seed0.examples.safetensors", "tiny-test.rr-seed0.json", "training_curves.png"]
    # the last epoch's checkpoint of each run is kept ([checkpoints] keep = 1)
    assert sorted(p.name for p in (first_run / "checkpoints" / "tiny-test.rr-seed0").iterdir()) == ["epoch-0001"]
    record = json.loads((first_run / "tiny-test.rr-seed0.json").read_text())
    assert record["recipe"] == {"sampler": "round_robin", "combiner": "sum", "regularizers": [],
                                "freezing": "none", "pooling": "mean", "pair_head": "concat_product"}
    for key in ("run_id", "suite", "seed", "model", "config", "metrics", "overall", "history", "train", "eval",
                "peak_memory_mb", "env"):
        assert key in record
    assert set(record["metrics"]) == {"sst", "quora", "sts"}
    assert set(record["metrics"]["sts"]) == {"pearson", "spearman"}
    # the baseline recipe (rr, the first) costs 1 by definition; its measured self-ratio is the noise
    assert record["cost"]["ratio"] == 1.0 and record["cost"]["self_ratio"] > 0
    other = json.loads((first_run / "tiny-test.joint-seed0.json").read_text())["cost"]
    assert "self_ratio" not in other and other["ratio"] == pytest.approx(statistics.median(other["ratios"]))
    # CPU time judged, the wall clock kept beside it; 2 rounds (the tests' cap): no interval, not precise
    assert other["clock"] == "thread_cpu" and other["rounds"] == len(other["ratios"]) == len(other["wall_ratios"]) == 2
    assert other["ratio_ci"] is None and other["precise"] is False and other["wall_ratio"] > 0
    assert record["best"]["sst"]["epoch"] == 1
    assert record["train"]["examples"] == 96 + 192 + 96  # round-robin uses every batch once per epoch
    assert record["train"]["examples_per_second"] > 0 and record["train"]["step_seconds_median"] > 0
    assert record["eval"]["examples_per_second"] > 0 and record["peak_memory_mb"] > 0
    assert record["env"]["torch"] == torch.__version__
    assert record["config"]["suite"]["train"]["epochs"] == 1
    assert record["model"]["max_length"] == 48  # the suite asks 128; the encoder has 48 positions: truncated
    primaries = [record["metrics"]["sst"]["accuracy"], record["metrics"]["quora"]["accuracy"],
                 record["metrics"]["sts"]["pearson"]]
    assert record["overall"] == pytest.approx(sum(primaries) / 3)
    assert (first_run / "metrics.png").read_bytes()[:4] == b"\x89PNG"


def test_same_recipe_and_seed_give_identical_metrics(first_run, suite_file, tmp_path):
    # in this process, against the first run's worker process: --jobs does not change a result
    assert main(["run", str(suite_file), "--recipes", "rr", "--out", str(tmp_path), "--no-progress"]) == 0
    again = json.loads((tmp_path / "tiny-test.rr-seed0.json").read_text())
    before = json.loads((first_run / "tiny-test.rr-seed0.json").read_text())
    assert again["metrics"] == before["metrics"] and again["history"] == before["history"]


def test_table_and_plot_rerender_from_records(first_run, capsys):
    assert main(["table", str(first_run)]) == 0
    assert re.search(r"\| rr \(baseline\) +\|", capsys.readouterr().out)
    assert main(["table", str(first_run), "--format", "csv", "--select", "best"]) == 0
    assert capsys.readouterr().out.startswith("suite,recipe,")
    assert main(["plot", str(first_run)]) == 0


def test_every_file_a_run_writes_is_an_ordinary_file(first_run):
    """Records, per-example files, tables, plots and checkpoints get the umask's permissions (0644
    under the usual 022), not a temporary file's 0600."""
    import os

    expected = 0o666 & ~_umask()
    written = [p for p in first_run.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert {p.suffix for p in written} >= {".json", ".safetensors", ".md", ".png", ".pt"}
    assert {oct(os.stat(p).st_mode & 0o777) for p in written} == {oct(expected)}


def _umask() -> int:
    from mtlbench.bench.files import umask

    return umask()


def test_an_empty_per_example_file_costs_its_marker_not_the_table(first_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(first_run, copy)
    for recipe in ("rr", "joint"):  # seeds 1 and 2 as copies of seed 0: markers are given from 3 seeds
        record = json.loads((copy / f"tiny-test.{recipe}-seed0.json").read_text())
        for seed in (1, 2):
            stem = f"tiny-test.{recipe}-seed{seed}"
            shutil.copy(copy / f"tiny-test.{recipe}-seed0.examples.safetensors", copy / f"{stem}.examples.safetensors")
            (copy / f"{stem}.json").write_text(json.dumps({**record, "seed": seed, "run_id": stem,
                                                           "examples_file": f"{stem}.examples.safetensors"}))
    (copy / "tiny-test.joint-seed0.examples.safetensors").write_bytes(b"")
    with pytest.warns(UserWarning, match="joint: a per-example file cannot be read"):
        assert main(["table", str(copy)]) == 0
    assert re.search(r"\| joint +\|", capsys.readouterr().out)
    with pytest.warns(UserWarning):
        assert main(["plot", str(copy)]) == 0


@pytest.mark.parametrize("args, message", [
    (["--recipes", "r"], "unknown recipe 'r' (did you mean 'rr'?)"),
    (["--data", "synthetc"], "--data: unknown source 'synthetc' (did you mean 'synthetic'?)"),
])
def test_bad_input_exits_2_with_one_line_and_no_record(suite_file, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["run", str(suite_file), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_unknown_strategy_in_a_suite_file_exits_2(tmp_path, capsys):
    bad = write_suite(tmp_path / "bad.toml", '[[recipes]]\nsampler = "round-robin"\n')
    assert main(["run", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "did you mean 'round_robin'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_data_command_reports_loaded_and_skipped(tmp_path, capsys, tiny_encoder_path):
    (tmp_path / "ids-sst-train.csv").write_text("\tid\tsentence\tsentiment\n0\ta\tgood\t4\n1\tb\tbad\tx\n")
    (tmp_path / "ids-sst-dev.csv").write_text("\tid\tsentence\tsentiment\n0\ta\tgood\t4\n")
    command = ["data", "--data", "cs224n", "--data-dir", str(tmp_path), "--tasks", "sst", "--model", tiny_encoder_path]
    assert main(command) == 0
    out = capsys.readouterr().out  # 'good' is a word of the tiny vocabulary: none unknown, none cut, dev in train
    assert re.search(r"sst +cs224n +train +1 +1 +0.0% +0.0% +- +1 label not in the label set", out), out
    assert re.search(r"sst +cs224n +dev +1 +0 +0.0% +0.0% +1 +-", out), out


def test_console_script_lists_strategies_and_fails_cleanly(tmp_path):
    script = Path(sys.executable).with_name("mtlbench")
    listed = subprocess.run([str(script), "list"], capture_output=True, text=True, timeout=120,
                            check=False)
    assert listed.returncode == 0
    for name in ("round_robin", "joint", "proportional", "temperature", "uniform", "sum", "weighted", "quick"):
        assert name in listed.stdout
    bad = subprocess.run([str(script), "run", "nosuchsuite", "--out", str(tmp_path / "o")], capture_output=True,
                         text=True, timeout=120, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("mtlbench: error: unknown suite 'nosuchsuite'")


@pytest.fixture
def toy_regularizer():
    @registry.register("regularizer", "pooled_l2_test")
    class PooledL2(Regularizer):
        """Test-only: lambda * mean squared pooled vector."""

        @dataclass
        class Options:
            weight: float = 0.1

        seen: ClassVar[list] = []

        def terms(self, step):
            PooledL2.seen.append((step.task, tuple(step.input_embeddings.shape), step.padding_mask.shape))
            return {"l2": self.options.weight * step.pooled.pow(2).mean()}
    yield PooledL2
    del registry._REGISTRY["regularizer"]["pooled_l2_test"]


def test_regularizers_plug_in_without_touching_the_trainer(toy_regularizer, tmp_path):
    suite = write_suite(tmp_path / "reg.toml", '[[recipes]]\nname = "reg"\nsampler = "joint"\n'
                                               'regularizers = [{ name = "pooled_l2_test", weight = 0.5 }]\n')
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    record = json.loads((tmp_path / "out" / "tiny-test.reg-seed0.json").read_text())
    assert record["recipe"]["regularizers"] == ["pooled_l2_test"]
    assert record["config"]["recipe"]["regularizers"] == [{"name": "pooled_l2_test", "options": {"weight": 0.5}}]
    assert {task for task, _, _ in toy_regularizer.seen} == {"sst", "quora", "sts"}


def test_a_strategy_registered_at_run_time_is_not_sent_to_worker_processes(toy_regularizer, tmp_path, capsys):
    suite = write_suite(tmp_path / "reg.toml", '[[recipes]]\nname = "reg"\nsampler = "joint"\n'
                                               'regularizers = ["pooled_l2_test"]\n', extra="seeds = 2")
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--jobs", "2"]) == 2
    assert "regularizer 'pooled_l2_test' registered at run time" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_external_packages_register_through_entry_points(monkeypatch):
    class FakeEntryPoint:
        def load(self):
            @registry.register("sampler", "external_test")
            class External(registry.get("sampler", "uniform")):
                """External test sampler."""
            return External

    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "entry_points", lambda group: [FakeEntryPoint()] if group == registry.ENTRY_POINT_GROUP else [])
    try:
        assert "external_test" in registry.available("sampler")
    finally:
        registry._REGISTRY["sampler"].pop("external_test", None)


def test_bench_never_names_a_strategy():
    names = {n for axis in registry.AXES for n in registry.available(axis)} - {"none", "sum"}
    for path in Path("bench").glob("*.py"):
        source = path.read_text()
        for name in names:
            assert f'"{name}"' not in source and f"'{name}'" not in source, f"{path} names strategy {name}"


def test_ci_runs_exactly_the_readme_test_command():
    readme = Path("README.md").read_text().splitlines()
    commands = [line for line in readme if line.startswith("python3 -m venv") and "pytest" in line]
    assert len(commands) == 1
    assert commands[0] in Path(".ci/run").read_text().splitlines()


def test_unloadable_model_is_a_one_line_error(suite_file, tmp_path, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "no-such-model"
    assert main(["run", str(suite_file), "--model", str(missing), "--out", str(out), "--no-progress"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mtlbench: error:")]
    assert errors == [f"mtlbench: error: --model {missing}: no such directory"]  # before any data is read
    assert not out.exists()


def test_a_second_run_into_the_same_directory_extends_the_table(first_run, suite_file, tmp_path):
    import shutil
    out = tmp_path / "shared"
    shutil.copytree(first_run, out)
    assert main(["run", str(suite_file), "--recipes", "rr", "--seeds", "2", "--out", str(out), "--no-progress"]) == 0
    import pandas as pd
    table = pd.read_csv(out / "table.csv").set_index("recipe")
    assert table.loc["rr", "seeds"] == 2  # seed 1 added to the earlier seed 0
    assert table.loc["joint", "seeds"] == 1  # the earlier recipe is still in the table


@pytest.mark.parametrize("argv", [["run", "quik"], ["tune", "quik"], ["run", "quick", "--model", "no-org/no-model"]])
def test_a_typo_is_answered_before_torch_is_imported(argv):
    """Not a timing: which modules the answer needed (torch and transformers take seconds to import)."""
    probe = ("import sys; from bench.cli import main; code = main(sys.argv[1:]); "
             "print(code, 'torch' in sys.modules, 'transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.stdout.split() == ["2", "False", "False"], done.stderr


def test_version_list_of_a_suite_and_a_folder_of_run_folders(tmp_path, capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"mtlbench {version('mtlbench')}"
    as_module = subprocess.run([sys.executable, "-m", "mtlbench", "--version"], capture_output=True, text=True,
                               timeout=120, check=False)  # what torchrun launches: -m mtlbench run SUITE
    assert as_module.stdout.strip() == f"mtlbench {version('mtlbench')}", as_module.stderr
    assert main(["list", "ci"]) == 0
    out = capsys.readouterr().out
    assert "2 seeds; 4 epochs; baseline joint_sum" in out
    assert re.search(r"joint_fgm +sampler joint, combiner sum, regularizers fgm, pooling mean, pair_head "
                     r"concat_product", out)
    assert main(["list", "quick"]) == 0 and "1 seed;" in capsys.readouterr().out  # not "1 seeds"
    (tmp_path / "runs" / "quick-20261202-1301").mkdir(parents=True)
    (tmp_path / "runs" / "quick-20261202-1301" / "x.json").write_text("{}")
    assert main(["table", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"its folders with records, newest first: {tmp_path / 'runs' / 'quick-20261202-1301'} (give one, or several "
        "to merge)")
