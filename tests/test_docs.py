"""The README's and docs' examples, run as written: every Python block executes, every suite in a
TOML block loads and passes validation, every task definition parses, every `mtlbench` command in a
shell block parses; and the docs' tables of sources and executors name what the code's tables hold."""

import re
import shlex
import tomllib
from pathlib import Path

import mtlbench
import pytest
from mtlbench.bench import executors
from mtlbench.bench.cli import parser
from mtlbench.bench.context import SuiteContext
from mtlbench.strategies import registry
from mtlbench.tasks import registry as task_registry
from mtlbench.tasks.source_types import SOURCES

from tests.conftest import FEW_COST_ROUNDS, SMALL_DATA, TINY_ENCODER

ROOT = Path(__file__).parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(language: str) -> list[tuple[str, str]]:
    """(where, code) of every fenced block in that language, in every document."""
    found = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(rf"^```{language}\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
            line = text[:match.start()].count("\n") + 1
            found.append((f"{path.relative_to(ROOT)}:{line}", match.group(1)))
    return found


def _section(name: str) -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8").split(f"## {name}", 1)[1].split("\n## ", 1)[0]


def test_every_python_block_is_run_here():
    """The blocks the tests below run, by their section: a new block without a test fails here."""
    assert len(blocks("python")) == 4  # the 4th: docs/hf_trainer.md, run by tests/bench/test_hf_trainer.py
    assert "```python" in _section("Add a strategy") and "```python" in _section("Python API")
    assert "```python" in _section("Use a strategy in your own code")


def test_the_readme_strategy_example_registers_a_working_sampler():
    code = re.search(r"```python\n(.*?)```", _section("Add a strategy"), re.DOTALL).group(1)
    try:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})  # noqa: S102 -- the README, on purpose
        import random

        cls = registry.get("sampler", "square_root")
        sampler = cls(registry.make_options(cls, {}, "test"), {"a": 4, "b": 1}, {"a": 400, "b": 100},
                      random.Random(0))
        assert sampler.probabilities() == pytest.approx({"a": 2 / 3, "b": 1 / 3})  # sqrt(400) : sqrt(100)
    finally:
        registry._REGISTRY["sampler"].pop("square_root", None)  # other tests list the registered samplers


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    """Executed as written, in a fresh folder; the only change is the tests' small encoder and data
    (the session's cached tiny encoder), added to the suite dict on its way into mtlbench.run."""
    monkeypatch.chdir(tmp_path)
    real_run = mtlbench.run

    def small(suite, **kwargs):
        return real_run({**suite, "tiny_encoder": TINY_ENCODER, "synthetic": SMALL_DATA, "cost": FEW_COST_ROUNDS},
                        **kwargs)
    monkeypatch.setattr(mtlbench, "run", small)
    namespace = {}
    code = re.search(r"```python\n(.*?)```", _section("Python API"), re.DOTALL).group(1)
    try:
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 -- the README, on purpose
    finally:
        registry._REGISTRY["combiner"].pop("halved_sts", None)  # other tests list the registered combiners
    records = namespace["records"]
    assert sorted(r.run_id for r in records) == ["notebook.halved_sts-seed0", "notebook.sum-seed0"]
    assert all(r.status == "finished" and len(r.history) == 2 for r in records)
    assert (tmp_path / "runs" / "notebook" / "table.md").exists()
    assert ("mean", "sst acc") in namespace["frame"].columns


def test_the_readme_own_loop_example_trains_with_pcgrad_and_fgm():
    namespace = {}
    code = re.search(r"```python\n(.*?)```", _section("Use a strategy in your own code"), re.DOTALL).group(1)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 -- the README, on purpose
    step, heads, forward, encoder = namespace["step"], namespace["heads"], namespace["forward"], namespace["encoder"]
    ids = namespace["ids"]
    before = {t: forward[t](encoder(ids))[0].item() for t in heads}
    assert step.combiner.name == "pcgrad" and step.regularizers[0].name == "fgm"
    assert step.regularizers[0].extra_forward_passes == 2 * 20  # one adversarial pass per task per step
    assert step.combiner.summary()["steps"] == 20
    # 20 more steps lower both training losses
    for _ in range(20):
        step.backward({t: namespace["mtlbench"].TaskInputs(encoder(ids), forward[t], namespace["mask"]) for t in heads})
        namespace["optimizer"].step()
        namespace["optimizer"].zero_grad()
    after = {t: forward[t](encoder(ids))[0].item() for t in heads}
    assert all(after[t] < before[t] for t in heads), (before, after)


@pytest.mark.parametrize("where, code", blocks("toml"), ids=[w for w, _ in blocks("toml")])
def test_every_toml_block_is_a_valid_suite_task_or_section(where, code, tmp_path):
    table = tomllib.loads(code)
    if "recipes" in table:  # a suite: loads, and passes the one validation pass
        SuiteContext(mtlbench.Suite.from_dict(table, source=where), tmp_path).validate()
    elif "kind" in table:  # a task definition
        task_registry.parse(table, "example", where, tmp_path)
    elif "check" in table or "tracking" in table:  # a section, in a suite of its own
        mtlbench.Suite.from_dict({"recipes": [{"sampler": "joint"}], **table}, source=where)
    else:  # pyproject's entry-point table
        assert "mtlbench.strategies" in table["project"]["entry-points"], where


def _commands() -> list[tuple[str, list[str]]]:
    found = []
    for where, code in blocks("bash"):
        for part in re.split(r"&&|\n", code):
            words = shlex.split(part, comments=True)
            if words and Path(words[0]).name == "mtlbench":
                found.append((where, words[1:]))
    return found


@pytest.mark.parametrize("where, argv", _commands(), ids=[f"{w} {' '.join(a[:2])}" for w, a in _commands()])
def test_every_mtlbench_command_in_a_shell_block_parses(where, argv):
    parser().parse_args(argv)


def _table_rows(document: str, heading: str) -> dict[str, str]:
    """The first column (without backticks) -> the row, of the first table under `heading`."""
    lines = (ROOT / "docs" / document).read_text(encoding="utf-8").split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    rows = [line for line in lines[start + 2:end] if line.startswith("| `")]  # after the header and its rule
    return {line.split("|")[1].strip().split()[0].strip("`"): line for line in rows}


def test_the_docs_table_of_sources_is_the_code_s():
    rows = _table_rows("tasks.md", "## Sources")
    assert set(rows) == set(SOURCES)
    for name, source in SOURCES.items():
        assert set(source.keys) <= set(re.findall(r"`(\w+)`", rows[name].split("|")[3])), name


def test_the_docs_table_of_executors_is_the_code_s():
    assert set(_table_rows("scale.md", "## Where runs execute")) == {executors.LOCAL, *executors.EXECUTORS}
