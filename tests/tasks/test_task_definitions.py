"""Declared tasks: the registry, the file and hub sources, and one-line errors for bad definitions."""

import json
import textwrap

import datasets
import pytest
from mtlbench.bench.cli import main
from mtlbench.tasks import registry
from mtlbench.tasks.errors import UserError
from mtlbench.tasks.sources import load_task

from tests.conftest import SMALL_DATA, TINY_ENCODER, _toml_table

LABEL_MAP = {"positive": 0, "negative": 1, "neutral": 2}  # not sorted order: the map decides the indices
TSV = "content\tlabel\n" + "".join(f"the film was {w}\t{lab}\n" for w, lab in
                                   [("good", "positive"), ("awful", "negative"), ("plain", "neutral")] * 8)


def write_task(folder, table: str, train=TSV, dev=TSV, label_map=LABEL_MAP):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.tsv").write_text(train, encoding="utf-8")
    (folder / "dev.tsv").write_text(dev, encoding="utf-8")
    if label_map is not None:
        (folder / "label2ind.json").write_text(json.dumps(label_map) if isinstance(label_map, dict) else label_map)
    path = folder / "task.toml"
    path.write_text(textwrap.dedent(table))
    return path


USER_TASK = """\
    name = "emotion"
    kind = "single_classification"
    labels = "label2ind.json"
    [sources.files]
    train = "train.tsv"
    dev = "dev.tsv"
    columns = { text = "content" }
    """


def test_builtin_tasks_are_definitions_in_the_registry():
    specs = registry.builtin()
    assert {"sst", "quora", "sts", "ner", "entity", "mlm"} <= set(specs)
    assert specs["sst"].labels == ("0", "1", "2", "3", "4") and specs["sst"].num_labels == 5
    assert specs["quora"].num_labels == 1  # two classes: one logit, as before
    assert specs["sts"].label_range == (0.0, 5.0)
    assert specs["ner"].kind.is_token_level and specs["ner"].primary_metric == "f1"


def test_a_tsv_task_with_a_label_map_loads_its_indices(tmp_path):
    spec = registry.find(str(write_task(tmp_path / "emotion", USER_TASK)))
    data = load_task("files", spec)
    assert data.labels == ("positive", "negative", "neutral") and data.label_origin == "label2ind.json"
    assert [r["label"] for r in data.rows["train"][:3]] == [0, 1, 2]
    assert data.rows["dev"][0] == {"text": "the film was good", "label": 0}


def test_inferred_labels_are_sorted_stably_and_numbers_numerically(tmp_path):
    rows = "content\tlabel\n" + "".join(f"x{i}\t{v}\n" for i, v in enumerate(["10", "9", "2", "10"]))
    spec = registry.find(str(write_task(tmp_path / "t", USER_TASK.replace('labels = "label2ind.json"\n', ""),
                                        train=rows, dev=rows, label_map=None)))
    data = load_task("files", spec)
    assert data.labels == ("2", "9", "10") and data.label_origin == "inferred from the training split"


def test_csv_jsonl_crlf_and_limits(tmp_path):
    csv_rows = 'text,label\r\n"a, quoted ""text""",yes\r\nplain,no\r\n' + "".join(f"row {i},no\r\n" for i in range(20))
    (tmp_path / "train.csv").write_text(csv_rows, encoding="utf-8", newline="")
    (tmp_path / "dev.jsonl").write_text('{"text": "a", "label": "yes"}\n{"text": "b", "label": "no"}\n')
    (tmp_path / "t.toml").write_text('kind = "single_classification"\nmax_train = 5\n'
                                     '[sources.files]\ntrain = "train.csv"\ndev = "dev.jsonl"\n')
    data = load_task("files", registry.find(str(tmp_path / "t.toml")))
    assert data.labels == ("no", "yes")
    assert len(data.rows["train"]) == 5 and data.skipped["train"] == {"over max_train": 17}
    full = load_task("files", registry.parse({"kind": "single_classification", "sources": {"files": {
        "train": "train.csv", "dev": "dev.jsonl"}}}, "t", "inline", tmp_path))
    assert full.rows["train"][0] == {"text": 'a, quoted "text"', "label": 1}
    assert len(load_task("files", registry.find(str(tmp_path / "t.toml"))).rows["train"]) == 5  # the same sample


def test_token_task_from_a_saved_hub_dataset_takes_label_names_from_features(tmp_path):
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"]))})
    split = {"tokens": [["the", "actor", "fixes", "the", "car"], ["why", "?"]], "ner_tags": [[1, 2, 0, 0, 0], [0, 0]]}
    datasets.DatasetDict({s: datasets.Dataset.from_dict(split, features=features)
                          for s in ("train", "validation")}).save_to_disk(str(tmp_path / "conll"))
    spec = registry.parse({"kind": "token_iob", "sources": {"hf": {"disk": "conll"}}}, "people", "inline", tmp_path)
    data = load_task("hf", spec)
    assert data.labels == ("O", "B-PER", "I-PER") and data.label_origin == "the dataset's features"
    assert data.rows["dev"][0] == {"tokens": ["the", "actor", "fixes", "the", "car"], "tags": [1, 2, 0, 0, 0]}


# --- malformed definitions and data files: one line naming the place, exit 2, nothing written --------

BAD_DEFINITIONS = [
    ("unknown kind", 'kind = "sentence_classification"\n[sources.files]\ntrain = "train.tsv"\ndev = "dev.tsv"\n',
     None, "kind: unknown kind 'sentence_classification' (did you mean 'single_classification'?)"),
    ("missing kind", '[sources.files]\ntrain = "train.tsv"\ndev = "dev.tsv"\n', None, "kind: missing"),
    ("unknown key", "lables = []\n" + textwrap.dedent(USER_TASK), None, "unknown key 'lables' (did you mean 'labels'?)"),
    ("metric of another kind", 'metric = "pearson"\n' + textwrap.dedent(USER_TASK), None,
     "metric: 'pearson' is not a metric of kind 'single_classification'"),
    ("no source", 'kind = "single_classification"\n', None, "no data source"),
    ("unknown source type", 'kind = "mlm"\n[sources.s3]\npath = "x"\n', None, "unknown source type 's3'"),
    ("missing column", USER_TASK.replace('"content"', '"sentence"'), None,
     "train.tsv: missing column 'sentence' (columns.text)"),
    ("label outside the declared set", USER_TASK, {"train": TSV + "the film was odd\tsurprised\n"},
     "train.tsv:26: label 'surprised' is not one of the task's labels"),
    ("empty split", USER_TASK, {"dev": "content\tlabel\n"}, "the dev split from source 'files' has no rows"),
    ("bad label map JSON", USER_TASK, {"label_map": '{"positive": 0,'}, "label2ind.json: line 1: not valid JSON"),
    ("label map indices", USER_TASK, {"label_map": {"positive": 0, "negative": 2}},
     "label2ind.json: indices must be the integers 0..1"),
    ("not UTF-8", USER_TASK, {"train": "content\tlabel\ncaf\xe9\tpositive\n".encode("latin-1")},
     "train.tsv:2: not UTF-8 (byte 0xe9)"),
    ("too few fields", USER_TASK, {"train": TSV + "only one field\n"}, "train.tsv:26: 1 fields, the header has 2"),
    ("too many fields: a delimiter in the text", USER_TASK, {"train": TSV + "the film\tthe plot\tpositive\n"},
     "train.tsv:26: 3 fields, the header has 2 (a delimiter inside a text: quote the field"),
    ("unclosed quote: blamed where it opens", USER_TASK,
     {"train": TSV + '"the film was fine\tpositive\nthe plot\tnegative\nfine\tpositive\n'},
     "train.tsv:26 (the row runs on to line 28): unexpected end of data - a quote opened here is never closed"),
    ("tokens and tags differ", 'kind = "token_iob"\n[sources.files]\ntrain = "train.jsonl"\ndev = "train.jsonl"\n',
     {"jsonl": '{"tokens": ["the", "film"], "tags": ["B-WORK", "I-WORK"]}\n{"tokens": ["a", "b"], "tags": ["O"]}\n'},
     "train.jsonl:2: 2 tokens but 1 tags"),
    ("not IOB tags", 'kind = "token_iob"\nlabels = ["O", "PER"]\n[sources.files]\ntrain = "t.jsonl"\ndev = "t.jsonl"\n',
     None, "labels: 'PER' is not an IOB tag"),
    ("bad TOML", 'kind = "single_classification\n', None, "task.toml: "),
    ("regression without range", 'kind = "pair_regression"\n[sources.files]\ntrain = "t.tsv"\ndev = "t.tsv"\n', None,
     "label_range: kind 'pair_regression' needs [low, high]"),
]


@pytest.mark.parametrize("case, table, files, message", BAD_DEFINITIONS, ids=[c[0] for c in BAD_DEFINITIONS])
def test_a_malformed_task_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, case, table, files, message):
    files = files or {}
    folder = tmp_path / "task"
    write_task(folder, table, label_map=files.get("label_map", LABEL_MAP))
    for name in ("train", "dev"):
        if name in files:
            content = files[name]
            target = folder / f"{name}.tsv"
            target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    if "jsonl" in files:
        (folder / "train.jsonl").write_text(files["jsonl"])
    suite = tmp_path / "suite.toml"
    suite.write_text(f'tasks = ["{folder / "task.toml"}"]\n[[recipes]]\nsampler = "round_robin"\n'
                     + _toml_table("synthetic", SMALL_DATA) + _toml_table("tiny_encoder", TINY_ENCODER))
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("mtlbench: error:")]
    assert len(errors) == 1 and len(lines) <= 2 and message in errors[0] and str(folder) in errors[0], lines
    assert not out.exists()


def test_the_shipped_fixture_is_the_generators_output(tmp_path):
    from pathlib import Path

    from mtlbench.tasks.synthetic import write_classification_fixture

    shipped = Path(__file__).parents[2] / "bench" / "suites" / "data" / "proportional-classification"
    write_classification_fixture(tmp_path, {"sentiment": {"train": 3000, "dev": 400, "test": 400},
                                            "topic": {"train": 1000, "dev": 400, "test": 400}})
    for path in shipped.rglob("*.*"):
        assert (tmp_path / path.relative_to(shipped)).read_text() == path.read_text(), path


def test_every_shipped_suite_loads_and_lists(capsys):
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    for name in ("mlm-entity-tagging", "proportional-classification", "classification-ner", "token_iob", "ner"):
        assert name in listed


def test_declared_labels_and_the_data_s_are_compared_without_surrounding_spaces(tmp_path):
    """A declared label "positive " is the data's "positive"; a label the task lacks is shown as written."""
    task = USER_TASK.replace('labels = "label2ind.json"', 'labels = ["positive ", " negative", "neutral"]')
    spec = registry.find(str(write_task(tmp_path / "spaced", task, label_map=None)))
    assert spec.labels == ("positive", "negative", "neutral")
    assert [r["label"] for r in load_task("files", spec).rows["train"][:3]] == [0, 1, 2]
    spaced = write_task(tmp_path / "data-spaced", task, train=TSV + "the film was odd\tpositive \n", label_map=None)
    assert load_task("files", registry.find(str(spaced))).rows["train"][-1]["label"] == 0
    odd = write_task(tmp_path / "odd", task, train=TSV + "the film was odd\t pos \n", label_map=None)
    with pytest.raises(UserError, match=r"train.tsv:26: label ' pos ' is not one of the task's labels "
                                        r"\('positive', 'negative', 'neutral'\)"):
        load_task("files", registry.find(str(odd)))
    with pytest.raises(UserError, match="repeated label"):
        registry.parse({"kind": "single_classification", "labels": ["a", "a "], "source": {"type": "synthetic",
                        "generator": "sst"}}, "t", "t.toml", tmp_path)


def test_empty_texts_are_skipped_and_counted_even_where_bad_rows_are_errors(tmp_path):
    spec = registry.find(str(write_task(tmp_path / "e", USER_TASK, train=TSV + "\tpositive\n   \tnegative\n")))
    data = load_task("files", spec)  # on_bad_row is "error" by default for files
    assert len(data.rows["train"]) == 24 and data.skipped["train"] == {"empty text": 2}
