"""Every bad input is one line naming the file, line, key or option, exit 2, and nothing written,
before anything trains. One table: (what is wrong, how to make it, the words the error must hold)."""

import json

import pytest
from mtlbench.bench.cli import main

from tests.conftest import FEW_COST_ROUNDS, SMALL_DATA, TINY_ENCODER, _toml_table

RECIPE = '[[recipes]]\nname = "sum"\nsampler = "joint"\n'


def suite(tmp_path, top: str = 'tasks = ["sst", "quora", "sts"]', train: str | None = "epochs = 1",
          recipes: str = RECIPE, extra: str = "", tiny: dict | None = None, synthetic: dict | None = None) -> str:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "bad.toml"
    train_table = f"[train]\n{train}\n" if train is not None else ""
    path.write_text(f'name = "bad"\n{top}\n{extra}\n{train_table}'
                    + _toml_table("synthetic", {**SMALL_DATA, **(synthetic or {})})
                    + _toml_table("tiny_encoder", {**TINY_ENCODER, **(tiny or {})})
                    + _toml_table("cost", FEW_COST_ROUNDS) + recipes)
    return str(path)


def task_key(tmp_path, key: str) -> str:
    """A suite whose [tasks] table names a task by `key`."""
    return suite(tmp_path, top=f'[tasks]\n"{key}" = "sst"\n"sts" = "sts"')


def predictions_layout(tmp_path, layout: str) -> str:
    """A suite whose SST reads the CS224N files and writes its predictions by `layout`."""
    return suite(tmp_path, top='[tasks.sst]\nfrom = "sst"\nsource = { type = "cs224n", file = "ids-sst-{split}.csv", '
                 f'predictions = {layout} }}\n[tasks.sts]\nfrom = "sts"')


def model_folder(tmp_path, files: dict[str, bytes]) -> str:
    """A --model folder holding only `files` (name -> bytes); b"tokenizer" saves the tiny tokenizer."""
    from mtlbench.bench import backbone
    from mtlbench.tasks import synthetic

    folder = tmp_path / "model"
    folder.mkdir()
    for name, data in files.items():
        if data == b"tokenizer":
            backbone._tokenizer(synthetic.vocabulary()).save_pretrained(folder)
        else:
            (folder / name).write_bytes(data)
    return str(folder)


def tiny_bert_folder(tmp_path) -> dict[str, bytes]:
    """A real config for the tiny shape, with weights cut off half-way."""
    from transformers import BertConfig

    config = BertConfig(vocab_size=600, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=48)
    return {"tokenizer": b"tokenizer", "config.json": config.to_json_string().encode(),
            "model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": "}


def data_file(tmp_path, train: str) -> str:
    """A suite whose SST training file is `train` (a path: a device, a FIFO, ...)."""
    (tmp_path / "d").mkdir(exist_ok=True)
    (tmp_path / "d" / "dev.tsv").write_text("id\tsentence\tsentiment\n0\tgood\t4\n1\tbad\t0\n")
    return suite(tmp_path, top=f'data = "files"\n[tasks.sst]\nfrom = "sst"\nsource = {{ type = "files", '
                 f'train = "{train}", dev = "d/dev.tsv", columns = {{ text = "sentence", label = "sentiment" }} }}')


def fifo(tmp_path) -> str:
    import os

    os.mkfifo(tmp_path / "fifo.tsv")
    return str(tmp_path / "fifo.tsv")


def broken_saved_dataset(tmp_path) -> str:
    """A --data-dir whose SST save_to_disk folder has a state.json cut short."""
    import datasets

    folder = tmp_path / "hf" / "sst"
    datasets.DatasetDict({s: datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
                          for s in ("train", "validation")}).save_to_disk(str(folder))
    (folder / "train" / "state.json").write_text('{"_data_files": [')
    return str(tmp_path / "hf")


def _link(tmp_path, name: str, target: str) -> str:
    (tmp_path / name).symlink_to(target)
    return str(tmp_path / name)


def _dangling(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    return tmp_path / "link"


def _records(tmp_path):
    from tests.bench.test_gate import record, results

    return results(tmp_path, [record("sum", 0, 0.9, 0.8)], "records")


def baseline_file(tmp_path, mean) -> str:
    from mtlbench.bench.gate import KIND, VERSION

    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"kind": KIND, "version": VERSION, "suite": "s", "select": "last", "config_hash": "x",
                                "recipes": {"sum": {"seeds": [0], "config_hash": "y", "cost": None, "metrics": {
                                    "sst": {"metric": "accuracy", "mean": mean, "std": 0.0, "values": [0.9]}}}}}))
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
    # Names that would become paths outside --out, or module names
    ("a [tasks] key with a path", lambda t: ["run", task_key(t, str(t / "escape" / "pwn"))],
     "is not a valid task name"),
    ("a [tasks] key with a dot", lambda t: ["run", task_key(t, "my.task")], "tasks.my.task: 'my.task' is not a valid task name"),
    ("predictions file escaping", lambda t: ["run", predictions_layout(t, '{ file = "../../x-{split}.csv", column = "P" }')],
     "sources.cs224n.predictions.file: '../../x-{split}.csv' is not a file name"),
    ("predictions file without {split}", lambda t: ["run", predictions_layout(t, '{ file = "out.csv", column = "P" }')],
     "predictions.file: 'out.csv' is not a file name with '{split}'"),
    ("predictions entry malformed", lambda t: ["run", predictions_layout(t, '{ file = "x-{split}.csv" }')],
     "predictions: needs file"),
    # Files that cannot be read, or would never end
    ("a TOML array nested 3000 deep", lambda t: ["run", suite(t, extra="x = " + "[" * 3000 + "]" * 3000)],
     "bad.toml: arrays or tables nested too deeply"),
    ("data file /dev/zero", lambda t: ["run", data_file(t, _link(t, "zero.tsv", "/dev/zero"))],
     "zero.tsv: not a regular file"),
    ("data file a FIFO", lambda t: ["run", data_file(t, fifo(t))], "fifo.tsv: not a regular file"),
    ("saved dataset with a broken state.json", lambda t: ["run", suite(t, top='tasks = ["sst"]'), "--data", "hf",
                                                         "--data-dir", broken_saved_dataset(t)],
     "sst: not a readable saved dataset"),
    ("a record with a string for a number", lambda t: ["table", record_dir(t, json.dumps(
        {"run_id": "x", "suite": "s", "recipe_name": "r", "recipe_index": 0, "seed": "one", "primary_metrics": {},
         "diverged": {}, "status": "diverged"}))], "r.json: seed: 'one' is not what a run record holds there"),
    ("a baseline mean NaN", lambda t: ["check", record_dir(t, None), "--baseline", baseline_file(t, float("nan"))],
     "recipes.sum.metrics.sst.mean: nan is not a finite number"),
    ("a baseline mean null", lambda t: ["check", record_dir(t, None), "--baseline", baseline_file(t, None)],
     "recipes.sum.metrics.sst.mean: None is not a finite number"),
    # Settings that cannot work, or would exhaust the memory before training
    ("heads not dividing the width", lambda t: ["run", suite(t, tiny={"num_heads": 3})],
     "[tiny_encoder]: hidden_size (32) must be a multiple of num_heads (3)"),
    ("no pre-training steps", lambda t: ["run", suite(t, tiny={"pretrain_steps": 0})],
     "[tiny_encoder]: pretrain_steps must be from 1 to 1000000, got 0"),
    ("an encoder a million wide", lambda t: ["run", suite(t, tiny={"hidden_size": 10**6, "num_heads": 1})],
     "hidden_size must be from 1 to 4096"),
    ("a trillion training rows", lambda t: ["run", suite(t, synthetic={"sst_train": 10**12})],
     "[synthetic]: sst_train must be from 0 to 1,000,000"),
    ("ten billion seeds", lambda t: ["run", suite(t, extra="seeds = 10000000000")],
     "seeds: 10000000000 seeds is more than the 10,000"),
    ("--seeds ten billion", lambda t: ["run", suite(t), "--seeds", "10000000000"], "--seeds: 10000000000 is more than"),
    ("a seed past numpy's", lambda t: ["run", suite(t, extra="seeds = [4294967296]")], "integers from 0 to 4294967295"),
    ("--precision fp8", lambda t: ["run", suite(t), "--precision", "fp8"], "--precision: unknown precision 'fp8'"),
    ("--out a dangling symlink", lambda t: ["run", suite(t), "--out", str(_dangling(t))], "which does not exist"),
    # Models that cannot load: one guard around every part
    ("a model folder with only a tokenizer", lambda t: ["run", suite(t), "--model", model_folder(t, {"t": b"tokenizer"})],
     "could not load the config of model"),
    ("a config that is not an object", lambda t: ["run", suite(t), "--model", model_folder(t, {"config.json": b"[1, 2]"})],
     "could not load the config of model"),
    ("truncated weights", lambda t: ["run", suite(t), "--model", model_folder(t, tiny_bert_folder(t))],
     "could not load the encoder of model"),
    ("baseline -o unwritable", lambda t: ["baseline", str(_records(t)), "-o", "/proc/mtlbench-baseline.json"],
     "/proc/mtlbench-baseline.json: cannot write"),
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
    ("tune: a setting tune does not search", lambda t: ["tune", suite(t, extra="[tune.space]\nepochs = { low = 1, "
                                                                             "high = 3 }")],
     "bad.toml [tune].space: 'epochs' is not a setting tune searches"),
    ("tune: an empty range", lambda t: ["tune", suite(t, extra="[tune.space]\nlr = { low = 1e-2, high = 1e-3 }")],
     "bad.toml [tune].space.lr: low must be below high"),
    ("tune: a recipe option that is not there", lambda t: ["tune", suite(t, recipes=RECIPE + 'combiner = "cagrad"\n'
                                                                        'tune = { "combiner.cc" = { low = 0, high = 1 } }\n')],
     "recipes[0].tune.combiner.cc: combiner 'cagrad' has no numeric option 'cc'"),
    ("tune: trials 0", lambda t: ["tune", suite(t), "--trials", "0"], "--trials: must be at least 1"),
    ("tune: a storage that does not open", lambda t: ["tune", suite(t), "--storage", "nosuchdb://x"],
     "--storage nosuchdb://x: cannot open it as an Optuna storage"),
    ("run --tuned: no studies there", lambda t: ["run", suite(t), "--tuned", str(t / "nowhere")],
     "no tune/study.db there"),
    ("a dial on the wrong generator", lambda t: ["run", suite(t, top='[tasks.sst]\nfrom = "sst"\nsources = { synthetic = '
                                                                   '{ generator = "sst", scale = 100 } }')],
     "only the sts generator's regression target scales"),
    ("a recipe's own max_length", lambda t: ["run", suite(t, recipes=RECIPE + "train = { max_length = 64 }\n")],
     "recipes[0].train: 'max_length' cannot differ between recipes"),
]


@pytest.mark.parametrize("make, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_place_exit_2_nothing_written(make, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = make(tmp_path)
    out = tmp_path / "out"
    if argv[0] in ("run", "tune") and "--out" not in argv:
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
    from mtlbench.bench.files import write_json_atomic
    from mtlbench.bench.gate import make_baseline
    from mtlbench.bench.records import RunRecord
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


def test_a_cuda_device_where_there_is_none_is_one_line_before_anything(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["run", suite(tmp_path, train='device = "cuda"'), "--out", str(tmp_path / "out")]) == 2
    assert "[train] device = 'cuda': this machine has no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # no lock file left behind either


@pytest.mark.parametrize("cache, words", [
    ("a file", "MTLBENCH_CACHE {}: exists and is not a directory"),
    ("/proc/mtlbench-cache", "MTLBENCH_CACHE /proc/mtlbench-cache: cannot write in /proc"),
])
def test_a_cache_that_cannot_be_written_is_one_line(cache, words, tmp_path, capsys, monkeypatch):
    if cache == "a file":
        cache = str(tmp_path / "cache-file")
        (tmp_path / "cache-file").write_text("x")
    monkeypatch.setenv("MTLBENCH_CACHE", cache)
    assert main(["run", suite(tmp_path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mtlbench: error: ") and words.format(cache) in err and "\n" not in err


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5", "²"])
def test_a_bad_mtlbench_jobs_is_one_line_before_anything(value, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MTLBENCH_JOBS", value)
    assert main(["run", suite(tmp_path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"mtlbench: error: MTLBENCH_JOBS={value!r}: expected a number of runs side by side, 1 or more"
    assert not (tmp_path / "out").exists()


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path, capsys, monkeypatch):
    """A sparse file as big as the limit plus one byte: refused from its size alone (the read that
    would fill the memory never happens)."""
    from mtlbench.tasks import files

    monkeypatch.setattr(files, "MAX_FILE_BYTES", 1 << 20)
    (tmp_path / "d").mkdir()
    with open(tmp_path / "d" / "big.tsv", "wb") as handle:
        handle.truncate((1 << 20) + 1)
    assert main(["run", data_file(tmp_path, str(tmp_path / "d" / "big.tsv")), "--out", str(tmp_path / "out")]) == 2
    assert "big.tsv: 1,048,577 bytes, more than the 1,048,576 a file may hold here" in capsys.readouterr().err


def test_absurd_sizes_are_refused_before_anything_is_allocated(tmp_path):
    """Ten billion seeds, a trillion rows, an encoder a million wide: each refused while the suite
    is read, with well under a megabyte allocated (tracemalloc's peak)."""
    import tracemalloc

    from mtlbench.bench.config import load_suite
    from mtlbench.tasks.errors import UserError

    cases = [suite(tmp_path / "a", extra="seeds = 10000000000"), suite(tmp_path / "b", synthetic={"quora_train": 10**12}),
             suite(tmp_path / "c", tiny={"hidden_size": 10**6, "num_heads": 1, "intermediate_size": 10**7})]
    for path in cases:
        tracemalloc.start()
        with pytest.raises(UserError):
            load_suite(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 1 << 20, (path, peak)
