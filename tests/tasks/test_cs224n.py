import pytest
from mtlbench.tasks import files
from mtlbench.tasks.errors import UserError
from mtlbench.tasks.sources import load_task

SST = (
    "\tid\tsentence\tsentiment\n"
    '0\tabc1\tA plain sentence .\t3\n'
    '1\tabc2\t"Wrapped in quotes ."\t0\n'
    '2\tabc3\t"""Tripled quotes , as published ."""\t4\n'
    '3\tabc4\tBad label row\tpositive\n'
    '4\tabc5\tOut of range\t7\n'
)
QUORA = (
    "\tid\tsentence1\tsentence2\tis_duplicate\n"
    "0\tq1\tHow do I fix a car ?\tHow can I repair a car ?\t1.0\n"
    "1\tq2\tWhy is the sky blue ?\tWhy is grass green ?\t0.0\n"
    "2\tq3\tBroken\tlabel\t0.5\n"
    "3\tq4\tToo few fields\n"
    "4\tq5\tA tab\tinside\ta question\t1.0\n"
    "5\tq6\tA trailing tab\tis harmless\t1.0\t\n"
)
STS = (
    "\tid\tsentence1\tsentence2\tsimilarity\n"
    '0\ts1\tA man plays .\t"A man is playing ."\t4.8\n'
    "1\ts2\tA dog runs .\tA cat sleeps .\t0.6\n"
    "2\ts3\tx\ty\tn/a\n"
)


def write_all(tmp_path, sst=SST):
    (tmp_path / "ids-sst-train.csv").write_text(sst)
    (tmp_path / "ids-sst-dev.csv").write_text(sst)
    (tmp_path / "ids-sst-test-student.csv").write_text("\tid\tsentence\n0\tt1\tNo label here .\n")
    for name, text in (("quora", QUORA), ("sts", STS)):
        (tmp_path / f"{name}-train.csv").write_text(text)
        (tmp_path / f"{name}-dev.csv").write_text(text)
    return tmp_path


def test_sst_quirks_are_parsed_and_bad_labels_counted(tmp_path):
    data = load_task("cs224n", "sst", write_all(tmp_path))
    texts = [r["text"] for r in data.rows["train"]]
    assert texts == ["A plain sentence .", "Wrapped in quotes .", "Tripled quotes , as published ."]
    assert [r["label"] for r in data.rows["train"]] == [3, 0, 4]
    assert data.skipped["train"] == {"label not in the label set": 2}
    assert data.rows["test"] == [{"id": "t1", "text": "No label here ."}]  # test-student: no label column


def test_quora_labels_are_integers_and_bad_rows_skipped(tmp_path):
    data = load_task("cs224n", "quora", write_all(tmp_path))
    assert [(r["text_b"], r["label"]) for r in data.rows["dev"]] == [
        ("How can I repair a car ?", 1), ("Why is grass green ?", 0), ("is harmless", 1)]
    assert data.skipped["dev"] == {"label not in the label set": 1, "too few fields": 1, "too many fields": 1}
    assert "test" not in data.rows  # optional file absent


def test_sts_scores_are_floats(tmp_path):
    data = load_task("cs224n", "sts", write_all(tmp_path))
    assert [r["label"] for r in data.rows["train"]] == [4.8, 0.6]
    assert data.rows["train"][0]["text_b"] == "A man is playing ."
    assert data.skipped["train"] == {"label not a number": 1}


def test_missing_required_column_names_file_and_column(tmp_path):
    write_all(tmp_path, sst="\tid\tsentence\tlabel\n0\ta\tb\t1\n")
    with pytest.raises(UserError) as error:
        load_task("cs224n", "sst", tmp_path)
    assert "ids-sst-train.csv" in str(error.value) and "'sentiment'" in str(error.value)


def test_missing_file_and_missing_dir_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="quora-train.csv: file not found"):
        load_task("cs224n", "quora", tmp_path)
    with pytest.raises(UserError, match="--data-dir"):
        load_task("cs224n", "quora", None)


def test_unquote_keeps_inner_text():
    assert files.unquote_cs224n('"""a "b" c"""') == 'a "b" c'
    assert files.unquote_cs224n('"x"') == "x"
    assert files.unquote_cs224n("plain") == "plain"
