"""The Python API (`import mtlbench`); the README's example runs in tests/test_docs.py."""

import tomllib
from pathlib import Path

import mtlbench
import pytest
from mtlbench.strategies import registry

from tests.conftest import SMALL_DATA, TINY_ENCODER

ROOT = Path(__file__).parents[2]


def test_suites_from_a_name_a_path_and_a_dict_agree(tmp_path):
    by_name = mtlbench.load_suite("ci")
    path = ROOT / "bench" / "suites" / "ci.toml"
    by_path = mtlbench.load_suite(path)
    table = tomllib.loads(path.read_text())
    by_dict = mtlbench.Suite.from_dict(table, source="ci.toml", directory=path.parent)
    for suite in (by_path, by_dict):
        assert [r.resolved() for r in suite.recipes] == [r.resolved() for r in by_name.recipes]
        assert suite.train == by_name.train
    assert mtlbench.load_suite("ci", epochs=7, lr=0.5).train.epochs == 7


def test_bad_input_raises_user_error_naming_the_key():
    with pytest.raises(mtlbench.UserError, match=r"<dict> \[train\]: epochs must be at least 1"):
        mtlbench.load_suite({"recipes": [{"sampler": "joint"}], "train": {"epochs": 0}})
    with pytest.raises(mtlbench.UserError, match=r"override 'epoch': not a suite key or \[train\] setting \(did you mean 'epochs'\?\)"):
        mtlbench.load_suite("ci", epoch=3)


def test_a_hand_built_recipe_gets_a_user_error_not_a_value_error(encoder, tokenizer, tmp_path):
    """Options are validated when a strategy spec is made; the checks that need the run's tasks
    happen on the one path that builds strategies (bench.context.make_strategies)."""
    import torch
    from mtlbench.bench.config import Recipe, StrategySpec
    from mtlbench.bench.context import build_strategies
    from mtlbench.bench.data import Encoding, TaskBatches, tokenize
    from mtlbench.bench.model import MultiTaskModel
    from mtlbench.tasks.builtin import SST
    from mtlbench.tasks.synthetic import SyntheticConfig, generate

    with pytest.raises(mtlbench.UserError, match=r"regularizer 'fgm': epsilon and weight must be >= 0"):
        StrategySpec.make("regularizer", "fgm", {"epsilon": -1.0})
    rows = generate("sst", SyntheticConfig(sst_train=16)).rows["train"]
    batches = {"sst": TaskBatches(tokenize(rows, tokenizer, Encoding("single", 32), tmp_path), SST, 8,
                                  tokenizer.pad_token_id, torch.Generator())}
    model = MultiTaskModel(encoder, [SST], "mean", "concat_product")
    recipe = Recipe("hand", StrategySpec.make("sampler", "joint"), StrategySpec.make("combiner", "sum"), (),
                    StrategySpec.make("freezing", "frozen_head", {"alternate": ["sts"]}), "mean", "concat_product")
    with pytest.raises(mtlbench.UserError, match=r"recipe 'hand': freezing.alternate: unknown task 'sts'"):
        build_strategies(recipe, model, batches, 0)


def test_every_package_is_installed():
    """pyproject lists packages by hand (mtlbench is bench/facade under another name): none forgotten."""
    listed = set(tomllib.loads(ROOT.joinpath("pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(("mtlbench", *p.parent.relative_to(ROOT).parts)) for top in ("bench", "strategies", "tasks")
             for p in ROOT.joinpath(top).rglob("__init__.py")} - {"mtlbench.bench.facade"}
    assert found | {"mtlbench"} == listed


def test_a_user_s_own_tasks_bench_and_strategies_modules_do_not_shadow_mtlbench(tmp_path):
    """The packages are installed under mtlbench: a working folder's tasks.py, bench/ or strategies.py
    (all common names) is the user's, and `import mtlbench` still finds its own."""
    import subprocess
    import sys

    (tmp_path / "tasks.py").write_text("raise SystemExit('the user tasks.py was imported')\n")
    (tmp_path / "strategies.py").write_text("raise SystemExit('the user strategies.py was imported')\n")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "__init__.py").write_text("raise SystemExit('the user bench/ was imported')\n")
    probe = "import mtlbench; print(len(mtlbench.load_suite('quick').recipes))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "11"), done.stderr[-2000:]


def test_a_suite_is_validated_once_and_each_run_builds_its_strategies_once(monkeypatch, tmp_path, caplog):
    """2 recipes x 2 seeds, no cost measurement, in this process: each recipe's strategies are built
    once by the validation pass (on an outline: no encoder loaded) and once per run; an encoder is
    loaded once per run, and once to check its weights load before any run starts."""
    from collections import Counter

    from mtlbench.bench import backbone

    builds, loads = Counter(), []
    real_build, real_load = registry.build, backbone.load_encoder
    monkeypatch.setattr(registry, "build", lambda axis, *a, **k: builds.update([axis]) or real_build(axis, *a, **k))
    monkeypatch.setattr(backbone, "load_encoder", lambda path: loads.append(path) or real_load(path))
    suite = {"name": "once", "tasks": ["sst", "sts"], "train": {"epochs": 1}, "seeds": 2, "cost": {"enabled": False},
             "tiny_encoder": TINY_ENCODER, "synthetic": SMALL_DATA,
             "recipes": [{"name": "a", "sampler": "joint"}, {"name": "b", "sampler": "round_robin"}]}
    with caplog.at_level("INFO", logger="mtlbench"):
        records = mtlbench.run(suite, out=tmp_path / "out", jobs=1)
    assert len(records) == 4 and len(loads) == 1 + 4  # once when the data is prepared (does it load?), once a run
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "mtlbench"]  # the CLI's lines
    planned = f"suite 'once': 2 recipes x 2 seeds on synthetic data, model tiny; records -> {tmp_path / 'out'}"
    assert ("INFO", planned) in said
    assert builds == {"sampler": 2 + 4, "combiner": 2 + 4, "freezing": 2 + 4}


def test_the_api_logs_warnings_where_they_show_without_set_up(caplog):
    """Python's last-resort handler prints WARNING and above: a data warning shows in a bare notebook."""
    from mtlbench.bench.api import log_to_logging

    with caplog.at_level("INFO", logger="mtlbench"):
        log_to_logging("  warning: sst: tokens unknown to the tokenizer: train 69%")
        log_to_logging("[1/4] a seed 0: sst 0.5")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "warning: sst: tokens unknown to the tokenizer: train 69%"), ("INFO", "[1/4] a seed 0: sst 0.5")]


def test_the_package_offers_the_api_s_names_without_importing_it_first():
    import subprocess
    import sys

    from mtlbench.bench import api

    assert mtlbench.__all__ == api.__all__ and all(getattr(mtlbench, n) is getattr(api, n) for n in api.__all__)
    probe = "import sys, mtlbench.bench.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.strip() == "False", done.stderr
