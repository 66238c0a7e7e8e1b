"""Every bad input is one line naming the file, line, key or option, exit 2, and nothing written,
before anything trains. One table: (what is wrong, how to make it, the words the error must hold)."""

import json

import pytest

from bench.cli import main
from tests.conftest import FEW_COST_ROUNDS, SMALL_DATA, TINY_ENCODER, _toml_table

RECIPE = '[[recipes]]\nname = "sum"\nsampler = "joint"\n'


def suite(tmp_path, top: str = 'tasks = ["sst", "quora", "sts"]', train: str | None = "epochs = 1",
          recipes: str = RECIPE, extra: str = "") -> str:
    path = tmp_path / "bad.toml"
    train_table = f"[train]\n{train}\n" if train is not None else ""
    path.write_text(f'name = "bad"\n{top}\n{extra}\n{train_table}' + _toml_table("synthetic", SMALL_DATA)
                    + _toml_table("tiny_encoder", TINY_ENCODER) + _toml_table("cost", FEW_COST_ROUNDS) + recipes)
    return str(path)


def sst_files(tmp_path, train: str, header: str = "id\tsentence\tsentiment") -> str:
    """A suite whose sst task reads user TSV files (the files source: a bad row is an error)."""
    (tmp_path / "d").mkdir(exist_ok=True)
    (tmp_path / "d" / "train.tsv").write_bytes(f"{header}\n".encode() + train.encode("utf-8", "surrogateescape"))
    (tmp_path / "d" / "dev.tsv").write_text(f"{header}\n0\tgood\t4\n1\tbad\t0\n")
    top = ('data = "files"\n[tasks.sst]\nfrom = "sst"\nsource = { type = "files", train = "d/train.tsv", '
           'dev = "d/dev.tsv", columns = { text = "sentence", label = "sentiment" } }')
    return suite(tmp_path, top=top)


def pair_files(tmp_path, task: str, label_column: str, value: str) -> str:
    (tmp_path / "d").mkdir(exist_ok=True)
    header = f"id\ts1\ts2\t{label_column}\n"
    (tmp_path / "d" / "train.tsv").write_text(header + f"0\ta cat\ta dog\t{value}\n1\tx\ty\t1\n")
    (tmp_path / "d" / "dev.tsv").write_text(header + "0\ta\tb\t1\n")
    top = (f'data = "files"\n[tasks.{task}]\nfrom = "{task}"\nsource = {{ type = "files", train = "d/train.tsv", '
           f'dev = "d/dev.tsv", columns = {{ text_a = "s1", text_b = "s2", label = "{label_column}" }} }}')
    return suite(tmp_path, top=top)


def cs224n_dir(tmp_path, train: bytes | None) -> str:
    folder = tmp_path / "cs224n"
    folder.mkdir()
    if train is not None:
        (folder / "ids-sst-train.csv").write_bytes(train)
        (folder / "ids-sst-dev.csv").write_text("\tid\tsentence\tsentiment\n0\ta\tgood\t4\n")
    return str(folder)


def folder_as_file(tmp_path) -> str:
    folder = cs224n_dir(tmp_path, None)
    (tmp_path / "cs224n" / "ids-sst-train.csv").mkdir()
    return folder


def record_dir(tmp_path, text: str | None) -> str:
    folder = tmp_path / "records"
    folder.mkdir()
    if text is not None:
        (folder / "r.json").write_text(text)
    return str(folder)


# (id, argv builder, words the one-line error holds)
CASES = [
    ("malformed TOML", lambda t: ["run", suite(t, top="tasks = [")], "bad.toml: "),
    ("unknown suite", lambda t: ["run", "quik"], "unknown suite 'quik' (did you mean 'quick'?)"),
    ("unknown recipe", lambda t: ["run", suite(t), "--recipes", "summ"], "unknown recipe 'summ' (did you mean 'sum'?)"),
    ("unknown strategy", lambda t: ["run", suite(t, recipes='[[recipes]]\nsampler = "round-robin"\n')],
     "bad.toml recipes[0].sampler: unknown sampler 'round-robin' (did you mean 'round_robin'?)"),
    ("unknown option", lambda t: ["run", suite(t, recipes=RECIPE + 'combiner = { name = "pcgrad", foo = 1 }\n')],
     "recipes[0].combiner: unknown option 'foo'"),
    ("unknown key, a synonym", lambda t: ["run", suite(t, train="learning_rate = 1e-3")],
     "[train]: unknown key 'learning_rate' (did you mean 'lr'?)"),
    ("unknown recipe key", lambda t: ["run", suite(t, recipes=RECIPE + 'combinr = "sum"\n')],
     "recipes[0]: unknown key 'combinr' (did you mean 'combiner'?)"),
    ("wrong type", lambda t: ["run", suite(t, train='batch_size = "16"')], "[train].batch_size: expected int"),
    ("epochs 0", lambda t: ["run", suite(t, train="epochs = 0")], "[train]: epochs must be at least 1, got 0"),
    ("epochs -1", lambda t: ["run", suite(t, train="epochs = -1")], "epochs must be at least 1, got -1"),
    ("batch size 0", lambda t: ["run", suite(t, train="batch_size = 0")], "batch_size must be at least 1"),
    ("eval batch size 0", lambda t: ["run", suite(t, train="eval_batch_size = 0")], "eval_batch_size must be at least 1"),
    ("lr 0", lambda t: ["run", suite(t, train="lr = 0.0")], "lr must be > 0"),
    ("lr negative", lambda t: ["run", suite(t, train="lr = -1e-3")], "lr must be > 0"),
    ("lr nan", lambda t: ["run", suite(t, train="lr = nan")], "[train].lr: expected a finite number"),
    ("dropout 1.5", lambda t: ["run", suite(t, train="dropout = 1.5")], "dropout must be in [0, 1)"),
    ("device tpu", lambda t: ["run", suite(t, train='device = "tpu"')], "device must be 'auto', 'cpu'"),
    ("threads 0", lambda t: ["run", suite(t, train="threads = 0")], "threads must be at least 1"),
    ("warmup ratio 2", lambda t: ["run", suite(t, train="warmup_ratio = 2")], "warmup_ratio is a fraction"),
    ("max length 0", lambda t: ["run", suite(t, train="max_length = 0")], "max_length must be at least 8"),
    ("train not a table", lambda t: ["run", suite(t, top='train = 5\ntasks = ["sst"]', train=None)],
     "[train]: expected a table, got 5"),
    ("negative epsilon", lambda t: ["run", suite(t, recipes=RECIPE + 'regularizers = [{ name = "fgm", epsilon = -1.0 }]\n')],
     "recipes[0].regularizers[0]: epsilon and weight must be >= 0"),
    ("temperature 0", lambda t: ["run", suite(t, recipes=RECIPE + 'regularizers = [{ name = "contrastive", temperature = 0.0 }]\n')],
     "temperature must be > 0"),
    ("weights for an unknown task", lambda t: ["run", suite(t, recipes=RECIPE + 'combiner = { name = "weighted", weights = { nope = 1.0 } }\n')],
     "bad.toml recipes[0]: combiner.weights: unknown task 'nope'"),
    ("weights not a table", lambda t: ["run", suite(t, recipes=RECIPE + 'combiner = { name = "weighted", weights = 3 }\n')],
     "recipes[0].combiner.weights: expected a table, got 3"),
    ("alternate not a list", lambda t: ["run", suite(t, recipes=RECIPE + 'freezing = { name = "frozen_head", alternate = "sst" }\n')],
     "recipes[0].freezing.alternate: expected a list, got 'sst'"),
    ("no tasks", lambda t: ["run", suite(t, top="tasks = []")], "bad.toml tasks: no tasks"),
    ("tasks a string", lambda t: ["run", suite(t, top='tasks = "sst"')], "tasks: expected a list of task names"),
    ("a task twice", lambda t: ["run", suite(t, top='tasks = ["sst", "sst"]')], "a task is named twice"),
    ("a seed twice", lambda t: ["run", suite(t, extra="seeds = [0, 0]")], "seeds lists a seed twice"),
    ("recipe name escapes --out", lambda t: ["run", suite(t, recipes='[[recipes]]\nname = "../../escape"\n')],
     "recipes[0].name: '../../escape' is not a valid name"),
    ("--seeds 0", lambda t: ["run", suite(t), "--seeds", "0"], "--seeds: must be at least 1, got 0"),
    ("--epochs 0", lambda t: ["run", suite(t), "--epochs", "0"], "--epochs: must be at least 1, got 0"),
    ("--data csv", lambda t: ["run", suite(t), "--data", "csv"], "--data: unknown source 'csv'"),
    ("--model missing", lambda t: ["run", suite(t), "--model", str(t / "nothing")], "nothing: no such directory"),
    ("--model empty folder", lambda t: ["run", suite(t), "--model", str((t / "empty").mkdir() or t / "empty")],
     "empty: the directory is empty"),
    ("--out is a file", lambda t: ["run", suite(t), "--out", str((t / "f").write_text("x") and t / "f")],
     "f: exists and is not a directory"),
    ("--out unwritable", lambda t: ["run", suite(t), "--out", "/proc/mtlbench-out"], "cannot write in /proc"),
    ("data dir missing", lambda t: ["run", suite(t), "--data", "cs224n", "--data-dir", str(t / "none")],
     "ids-sst-train.csv: file not found"),
    ("data dir empty", lambda t: ["run", suite(t), "--data", "cs224n", "--data-dir", cs224n_dir(t, None)],
     "ids-sst-train.csv: file not found"),
    ("data file a folder", lambda t: ["run", suite(t), "--data", "cs224n", "--data-dir", folder_as_file(t)],
     "ids-sst-train.csv: is a folder"),
    ("header only", lambda t: ["run", sst_files(t, "")], "train.tsv: task 'sst': the train split from source 'files' has no rows"),
    ("missing column", lambda t: ["run", sst_files(t, "0\tgood\n", header="id\tsentence")],
     "train.tsv: missing column 'sentiment'"),
    ("non-numeric label", lambda t: ["run", sst_files(t, "0\tgood\tx\n")], "train.tsv:2: "),
    ("sentiment 7", lambda t: ["run", sst_files(t, "0\tgood\t7\n")], "train.tsv:2: "),
    ("NaN label", lambda t: ["run", sst_files(t, "0\tgood\tnan\n")], "train.tsv:2: "),
    ("similarity 9.5", lambda t: ["run", pair_files(t, "sts", "similarity", "9.5")], "train.tsv:2: "),
    ("is_duplicate 2", lambda t: ["run", pair_files(t, "quora", "is_duplicate", "2")], "train.tsv:2: "),
    ("binary garbage", lambda t: ["run", sst_files(t, "0\t\udcff\udcfe\x00\x01\t4\n")], "train.tsv:2: a NUL byte"),
    ("latin-1 bytes", lambda t: ["run", sst_files(t, "0\tcaf\udce9\t4\n")], "train.tsv:2: not UTF-8 (byte 0xe9)"),
    ("NUL byte", lambda t: ["run", sst_files(t, "0\tgo\x00od\t4\n")], "train.tsv:2: a NUL byte"),
    ("100 000-character line", lambda t: ["run", sst_files(t, "0\t" + "x" * 200_000 + "\t4\n")],
     "train.tsv:2: field larger than field limit"),
    ("data: latin-1", lambda t: ["data", "--data", "cs224n", "--tasks", "sst", "--data-dir",
                                 cs224n_dir(t, b"\tid\tsentence\tsentiment\n0\ta\tcaf\xe9\t4\n")],
     "ids-sst-train.csv:2: not UTF-8"),
    ("table: empty directory", lambda t: ["table", record_dir(t, None)], "no run records"),
    ("table: corrupted record", lambda t: ["table", record_dir(t, '{"run_id": "x", ')], "r.json: not valid JSON"),
    ("table: record missing keys", lambda t: ["table", record_dir(t, json.dumps({"run_id": "x", "suite": "s"}))],
     "r.json: not a complete run record: missing key 'recipe_name'"),
    ("plot: empty directory", lambda t: ["plot", record_dir(t, None)], "no run records"),
    ("check: baseline missing", lambda t: ["check", record_dir(t, "[1,"), "--baseline", "b.json"],
     "b.json: file not found"),
]


@pytest.mark.parametrize("make, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_place_exit_2_nothing_written(make, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = make(tmp_path)
    out = tmp_path / "out"
    if argv[0] == "run" and "--out" not in argv:
        argv += ["--out", str(out), "--no-progress"]
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mtlbench: error: ") and "\n" not in err, err
    assert words in err, err
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written, not even an empty --out


def test_records_of_two_suites_are_refused_by_check(tmp_path, capsys):
    from tests.bench.test_gate import record, results

    directory = results(tmp_path, [record("sum", 0, 0.9, 0.8), record("rr", 0, 0.9, 0.8, suite="other")])
    baseline = tmp_path / "base.json"
    from bench.files import write_json_atomic
    from bench.gate import make_baseline
    from bench.records import RunRecord
    write_json_atomic(baseline, make_baseline([RunRecord.from_dict(record("sum", 0, 0.9, 0.8))]))
    assert main(["check", str(directory), "--baseline", str(baseline)]) == 2
    assert "records of several suites (other, s)" in capsys.readouterr().err


def test_list_into_a_closed_pipe_is_not_an_error():
    import subprocess
    import sys
    from pathlib import Path

    mtlbench = str(Path(sys.executable).with_name("mtlbench"))
    result = subprocess.run(f"'{mtlbench}' list | head -1", shell=True, capture_output=True, text=True, check=False)
    assert result.stdout == "samplers:\n" and result.stderr == ""
