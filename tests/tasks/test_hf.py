"""The hub mapping path, on DatasetDicts built locally (no network)."""

import datasets
import pytest
from mtlbench.tasks.builtin import QUORA, STS
from mtlbench.tasks.errors import UserError
from mtlbench.tasks.sources import load_task


def _save(tmp_path, task, splits):
    datasets.DatasetDict({k: datasets.Dataset.from_dict(v) for k, v in splits.items()}).save_to_disk(
        str(tmp_path / task))


def test_glue_qqp_columns_map_to_pairs_and_unlabelled_test_rows_are_skipped(tmp_path):
    split = {"question1": ["how to fix a car ?", "why ?"], "question2": ["how to repair a car ?", "what ?"],
             "label": [1, 0], "idx": [0, 1]}
    test = dict(split, label=[-1, -1])
    _save(tmp_path, "quora", {"train": split, "validation": split, "test": test})
    data = load_task("hf", "quora", tmp_path)
    assert data.rows["train"][0] == {"text_a": "how to fix a car ?", "text_b": "how to repair a car ?", "label": 1}
    assert data.rows["test"] == [] and data.skipped["test"] == {"unlabelled": 2}


def test_stsb_labels_are_floats_and_sst5_is_single_sentence(tmp_path):
    sts = {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [4.2, 0.0]}
    _save(tmp_path, "sts", {"train": sts, "validation": sts})
    assert [r["label"] for r in load_task("hf", "sts", tmp_path).rows["dev"]] == [4.2, 0.0]
    sst = {"text": ["great", "bad"], "label": [4, 0], "label_text": ["very positive", "very negative"]}
    _save(tmp_path, "sst", {"train": sst, "validation": sst, "test": sst})
    assert load_task("hf", "sst", tmp_path).rows["test"] == [{"text": "great", "label": 4}, {"text": "bad", "label": 0}]


def test_missing_column_is_a_clear_error(tmp_path):
    _save(tmp_path, "sts", {"train": {"sentence1": ["a"], "label": [1.0]}, "validation": {"sentence1": ["a"], "label": [1.0]}})
    with pytest.raises(UserError, match=r"missing column 'sentence2' \(columns.text_b\)"):
        load_task("hf", "sts", tmp_path)


def test_hub_specs_name_real_datasets():
    assert QUORA.sources["hf"]["path"] == "nyu-mll/glue" and QUORA.sources["hf"]["name"] == "qqp"
    assert STS.sources["hf"]["name"] == "stsb"


def test_hub_failure_is_a_one_line_error_with_the_offline_alternative(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub\nmore detail")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError) as error:
        load_task("hf", "sts")
    message = str(error.value)
    assert "nyu-mll/glue (stsb)" in message and "--data-dir" in message and "\n" not in message


def test_an_unreachable_hub_fails_at_once_in_offline_mode(monkeypatch):
    """Without a way to the hub, load_dataset would retry each request with back-off; one probe
    decides, and the load runs in offline mode: no retries, the libraries' flags put back after."""
    from huggingface_hub import constants
    from mtlbench.tasks import hf

    seen = {}

    def load(*args, **kwargs):
        seen["offline"] = (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")
    monkeypatch.setattr(hf, "_hub_reachable", lambda timeout=5.0: False)
    monkeypatch.setattr(datasets, "load_dataset", load)
    before = (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    with pytest.raises(UserError, match="OfflineModeIsEnabled.*--data-dir"):
        load_task("hf", "sts")
    assert seen["offline"] == (True, True) and (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE) == before


def test_the_hub_probe_on_this_machine_answers_without_retrying(capfd):
    """The real probe (no network here: no name service; with one, an answer): one request, no
    back-off lines."""
    from mtlbench.tasks import hf

    assert hf._hub_reachable(timeout=5.0) in (True, False)
    assert "Retrying" not in capfd.readouterr().err
