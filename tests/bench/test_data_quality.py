"""What the encoder sees of the data: unknown tokens, rows cut at max_length, rows shared with train,
measured on cases whose answer is counted by hand; shown by `mtlbench data`, recorded, warned about,
and a run on text its tokenizer does not know refused."""

import json

import pytest
from mtlbench.bench import backbone, data_quality
from mtlbench.bench.cli import main
from mtlbench.tasks.errors import UserError

from tests.conftest import write_suite
from tests.tasks.test_cs224n import write_all


@pytest.fixture(scope="module")
def word_tokenizer():
    """The tiny encoder's kind of tokenizer (word level, [UNK] for the rest) on six known words."""
    return backbone._tokenizer(["the", "cat", "sat", "on", "a", "mat"])


def test_unknown_share_counts_the_text_tokens_only(word_tokenizer):
    rows = [{"text": "the cat sat"}, {"text": "the dog barked loudly"}]  # 7 text tokens, 3 unknown; specials aside
    quality = data_quality.measure_split(rows, word_tokenizer, max_length=64)
    assert quality.unknown_share == pytest.approx(3 / 7) and quality.truncated_share == 0
    assert data_quality.measure_split([{"text": "a cat on a mat"}], word_tokenizer, 64).unknown_share == 0


def test_pairs_count_both_texts_and_truncation_follows_the_encoding(word_tokenizer):
    rows = [{"text_a": "the cat", "text_b": "zebra zebra"}, {"text_a": "the cat sat on a mat", "text_b": "a cat"}]
    separate = data_quality.measure_split(rows, word_tokenizer, max_length=6)  # [CLS] 6 words [SEP] = 8 > 6
    assert separate.unknown_share == pytest.approx(2 / 12) and separate.truncated_share == 0.5
    together = data_quality.measure_split(rows, word_tokenizer, max_length=6, cross=True)  # 2+2+3 and 6+2+3 > 6
    assert together.truncated_share == 1.0


def test_word_rows_are_measured_as_words(word_tokenizer):
    rows = [{"tokens": ["the", "Cat", "purred"], "tags": [0, 0, 0]}]
    assert data_quality.measure_split(rows, word_tokenizer, 64).unknown_share == pytest.approx(1 / 3)


def test_rows_shared_with_train_are_counted_by_text_not_label():
    rows = {"train": [{"text": "x", "label": 0}, {"text": "y", "label": 1}],
            "dev": [{"text": "x", "label": 1}, {"text": "z", "label": 0}, {"text": "y", "label": 1}]}
    quality = data_quality.measure_task(rows, backbone._tokenizer(["x", "y"]), 64)
    assert quality["dev"]["in_train"] == 2 and quality["dev"]["in_train_share"] == pytest.approx(2 / 3, abs=1e-4)
    assert quality["train"]["in_train"] is None
    lines = data_quality.warnings({"sst": quality}, 64)
    assert any(line.startswith("sst: rows whose text is also in train: dev 67%") for line in lines)
    assert any("sst: tokens unknown to the tokenizer: dev 33%" in line for line in lines)


def test_a_task_the_tokenizer_does_not_know_is_refused_with_the_fix():
    quality = {"sst": {"train": {"unknown_share": 0.69}}, "sts": {"train": {"unknown_share": 0.01}}}
    with pytest.raises(UserError, match=r"unknown tokens in train: sst 69% \(over --max-unknown 0.25\).*--model NAME"):
        data_quality.refuse_unknown(quality, 0.25, "tiny")
    data_quality.refuse_unknown(quality, 0.7, "tiny")  # asked for: runs


def test_mtlbench_data_on_the_course_files_prints_coverage_and_warns(tmp_path, tiny_encoder_path, capsys):
    write_all(tmp_path)  # the CS224N layout, English the tiny encoder's tokenizer mostly does not know
    assert main(["data", "--data", "cs224n", "--data-dir", str(tmp_path), "--model", tiny_encoder_path]) == 0
    out, err = capsys.readouterr()
    sst_train = next(line.split() for line in out.splitlines() if line.startswith("sst ") and " train " in line)
    assert sst_train[:5] == ["sst", "cs224n", "train", "3", "2"] and float(sst_train[5].rstrip("%")) > 50
    assert "warning: sst: tokens unknown to the tokenizer: train" in err
    assert "warning: sst: rows whose text is also in train: dev 100%" in err  # the test writes train == dev


def test_run_refuses_before_writing_anything_and_the_record_keeps_the_measures(tmp_path, tiny_encoder_path, capsys):
    (tmp_path / "data").mkdir()
    data = write_all(tmp_path / "data")
    suite = write_suite(tmp_path / "suite.toml", '[[recipes]]\nname = "joint"\n',
                        extra=f'data = "cs224n"\ndata_dir = "{data}"\nmodel = "{tiny_encoder_path}"')
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "the tokenizer of model" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--no-progress", "--max-unknown", "1"]) == 0
    record = json.loads((tmp_path / "out" / "tiny-test.joint-seed0.json").read_text())
    quality = record["data"]["quality"]
    assert quality["sst"]["train"]["unknown_share"] > 0.5 and quality["sst"]["dev"]["in_train_share"] == 1.0
    assert record["env"]["cpu_model"]  # the baseline keeps it: rounding differs between CPU models
    assert "rows whose text is also in train: dev 100%" in capsys.readouterr().err


def _readme_api_suite() -> dict:
    """The suite dict of the README's Python API example, as printed there."""
    import ast
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index("suite = {", readme.index("## Python API")) + len("suite = ")
    return ast.literal_eval(readme[start:readme.index("\n}\n", start) + 2])


def test_one_tiny_encoder_build_serves_every_shipped_suite_and_the_readme_example(monkeypatch, tmp_path):
    """The encoder depends on its own settings and the vocabulary, not on a suite's [synthetic] sizes:
    after the default run, the README's API example builds nothing."""
    from mtlbench.bench import api

    builds = []

    def counted_build(config, target, log):
        builds.append(config)
        (target / "mtlbench-tiny.json").write_text("{}")

    monkeypatch.setenv("MTLBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(backbone, "_pretrain", counted_build)
    example = _readme_api_suite()
    example["recipes"] = example["recipes"][:1]  # its own combiner is registered in the example
    quick, example = api.load_suite("quick"), api.Suite.from_dict(example)
    assert quick.synthetic != example.synthetic  # different data, one encoder
    for suite in (quick, example, api.load_suite("ci"), api.load_suite("cs224n-table4")):
        backbone.resolve(suite.model, suite.tiny_encoder, log=lambda m: None)
    assert len(builds) == 1
