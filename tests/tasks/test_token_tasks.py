"""Token tagging and MLM: label alignment, the masking rule, the metrics, and whole runs."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from mtlbench.bench.cli import main
from mtlbench.bench.data import IGNORE, Masker, align_labels
from mtlbench.tasks import metrics
from mtlbench.tasks.registry import find
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from tests.conftest import FEW_COST_ROUNDS, SMALL_DATA, TINY_ENCODER, _toml_table

WORDS = ["the", "filmmaker", "repairs", "unbelievably", "small", "cars"]


def _fast(core: Tokenizer) -> PreTrainedTokenizerFast:
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", core.token_to_id("[CLS]")), ("[SEP]", core.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=core, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                   unk_token="[UNK]", mask_token="[MASK]")


def wordpiece() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film", "##maker",
                                         "repair", "##s", "un", "##believ", "##ably", "small", "car"])}
    core = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return _fast(core)


def bpe() -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE(unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = trainers.BpeTrainer(vocab_size=80, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(["the film is small", "a car repairs", "believe it"] * 5, trainer)
    return _fast(core)


@pytest.mark.parametrize("make", [wordpiece, bpe], ids=["wordpiece", "bpe"])
def test_each_words_tag_goes_on_its_first_sub_word(make):
    tokenizer = make()
    tags = [0, 1, 0, 2, 3, 4]
    encoded = tokenizer(WORDS, is_split_into_words=True)
    labels = align_labels(encoded.word_ids(), tags)
    pieces = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert len(pieces) > len(WORDS) + 2  # words really were split
    first = [i for i, w in enumerate(encoded.word_ids()) if w is not None and w != encoded.word_ids()[i - 1]]
    assert [labels[i] for i in first] == tags  # one label per word, in order, on its first piece
    assert all(labels[i] == IGNORE for i in range(len(labels)) if i not in first)  # specials, later pieces
    if make is wordpiece:
        assert pieces[1:4] == ["the", "film", "##maker"] and labels[1:4] == [0, 1, IGNORE]


def test_masking_follows_the_collator_rule_and_the_seed():
    tokenizer = wordpiece()
    ids = torch.randint(5, 15, (400, 60))
    ids[:, 0], ids[:, 49] = 2, 3  # [CLS] ... [SEP], then padding
    mask = torch.ones_like(ids)
    mask[:, 50:] = 0  # padding
    masked, labels = Masker(tokenizer, seed=3)(ids, mask)
    chosen = labels != IGNORE
    assert not chosen[:, 0].any() and not chosen[:, 49:].any()  # never a special token or padding
    rate = chosen.sum().item() / (400 * 48)
    assert abs(rate - 0.15) < 0.01
    assert torch.equal(labels[chosen], ids[chosen])
    to_mask = (masked[chosen] == tokenizer.mask_token_id).float().mean().item()
    kept = (masked[chosen] == ids[chosen]).float().mean().item()
    assert abs(to_mask - 0.8) < 0.03 and 0.07 < kept < 0.15  # 10 % kept, plus random draws of the same id
    assert torch.equal(Masker(tokenizer, seed=3)(ids, mask)[1], labels)
    assert not torch.equal(Masker(tokenizer, seed=4)(ids, mask)[1], labels)


def test_iob_scores_are_entity_level():
    names = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
    gold = [[1, 2, 0, 3], [0, 3, 4]]
    half = [[1, 0, 0, 3], [0, 3, 4]]  # the first entity is cut short: wrong as an entity, 1 token off
    spec = find("ner").with_labels(names, "test")
    scores = metrics.score(spec, half, gold)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["accuracy"] == pytest.approx(6 / 7)
    assert metrics.score(spec, gold, gold)["f1"] == 1.0


def test_binary_tagging_and_mlm_metrics():
    scores = metrics.binary_tagging([[1, 1, 0, 0]], [[1, 0, 0, 1]])
    assert scores["precision"] == 0.5 and scores["recall"] == 0.5 and scores["accuracy"] == 0.5
    nll = [math.log(2), math.log(8)]
    mlm = metrics.masked_lm([[(7, nll[0]), (3, nll[1])]], [[7, 4]])
    assert mlm["accuracy"] == 0.5 and mlm["perplexity"] == pytest.approx(4.0)


def _suite(tmp_path, tasks: str, recipes: str, extra: str = "") -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(f"{tasks}\ntest = true\n{extra}\n[train]\nepochs = 2\nbatch_size = 16\nlr = 2e-3\n"
                    + _toml_table("synthetic", {**SMALL_DATA, "ner_train": 96, "ner_dev": 32, "ner_test": 32})
                    + _toml_table("tiny_encoder", TINY_ENCODER) + _toml_table("cost", FEW_COST_ROUNDS) + recipes)
    return path


def test_mlm_and_tagging_run_with_every_combiner_family_and_fgm(tmp_path, capsys):
    recipes = "".join(f'[[recipes]]\nname = "{c}"\nsampler = "joint"\ncombiner = "{c}"\n' for c in ("sum", "pcgrad", "mgda"))
    recipes += '[[recipes]]\nname = "fgm"\nsampler = "joint"\nregularizers = ["fgm"]\n'
    out = tmp_path / "out"
    suite = _suite(tmp_path, 'tasks = ["mlm", "entity", "ner"]', recipes)
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--jobs", "1", "--predictions"]) == 0
    for name in ("sum", "pcgrad", "mgda", "fgm"):
        record = json.loads((out / f"suite.{name}-seed0.json").read_text())
        assert record["model"]["mlm_head"] == "checkpoint (mlm_head.safetensors)"
        for task in ("mlm", "entity", "ner"):
            test = record["test_at_best_dev"][task]
            assert test["epoch"] == record["best"][task]["epoch"]
            assert all(math.isfinite(v) for v in test.values())
        assert record["metrics"]["mlm"]["perplexity"] > 1 and 0 <= record["metrics"]["ner"]["f1"] <= 1
        assert record["config"]["tasks"]["ner"]["labels"][0] == "O"
    predictions = (out / "predictions" / "suite.sum-seed0" / "ner-test.tsv").read_text().splitlines()
    assert predictions[0] == "id\tprediction" and len(predictions) == 33
    names = set(json.loads((out / "suite.sum-seed0.json").read_text())["config"]["tasks"]["ner"]["labels"])
    tags = [line.split("\t")[1].split() for line in predictions[1:]]
    assert all(tag in names for sentence in tags for tag in sentence) and all(tags)


def test_mlm_masks_of_dev_are_the_same_for_every_run_and_training_masks_follow_the_seed(tmp_path):
    out = tmp_path / "out"
    suite = _suite(tmp_path, 'tasks = ["mlm", "entity"]', '[[recipes]]\nname = "a"\nsampler = "joint"\n'
                   '[[recipes]]\nname = "b"\nsampler = "joint"\n')
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--jobs", "1", "--seeds", "2"]) == 0
    runs = {p.stem: json.loads(p.read_text()) for p in out.glob("*-seed*.json")}
    assert runs["suite.a-seed0"]["metrics"] == runs["suite.b-seed0"]["metrics"]  # same seed: same masks, same run
    assert runs["suite.a-seed0"]["history"][0]["train_loss"] != runs["suite.a-seed1"]["history"][0]["train_loss"]


def test_a_user_tsv_task_with_a_label_map_runs_end_to_end_with_test_at_best_dev(tmp_path):
    fixture = Path(__file__).parents[2] / "bench" / "suites" / "data" / "proportional-classification"
    shutil.copytree(fixture / "topic", tmp_path / "topic")
    for split in ("train", "dev", "test"):  # a smaller copy of the shipped fixture
        path = tmp_path / "topic" / f"{split}.tsv"
        path.write_text("\n".join(path.read_text().splitlines()[:81]) + "\n")
    extra = ('[tasks.topic]\nkind = "single_classification"\nlabels = "topic/label2ind.json"\n'
             'source = { type = "files", train = "topic/train.tsv", dev = "topic/dev.tsv", test = "topic/test.tsv", '
             'columns = { text = "content" } }\n[tasks.sst]\nfrom = "sst"\n')
    suite = _suite(tmp_path, "", '[[recipes]]\nname = "p"\nsampler = "proportional"\n', extra)
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--jobs", "1", "--predictions"]) == 0
    record = json.loads((out / "suite.p-seed0.json").read_text())
    assert record["config"]["tasks"]["topic"]["labels"] == ["work", "person", "place", "object"]
    assert record["data"]["sources"] == {"topic": "files", "sst": "synthetic"}
    assert record["data"]["rows"]["topic"] == {"train": 80, "dev": 80, "test": 80}
    assert set(record["test_at_best_dev"]) == {"topic", "sst"}
    rows = (out / "predictions" / "suite.p-seed0" / "topic-test.tsv").read_text().splitlines()
    assert len(rows) == 81 and rows[1].split("\t")[1] in {"work", "person", "place", "object"}


def test_contrastive_is_refused_without_a_pair_task(tmp_path, capsys):
    suite = _suite(tmp_path, 'tasks = ["sst", "ner"]', '[[recipes]]\nname = "c"\nsampler = "joint"\n'
                   'regularizers = ["contrastive"]\n')
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "works on pair tasks" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_iob_tags_inferred_from_a_tsv_are_tags_not_characters(tmp_path):
    """A CSV/TSV cell holds space-separated tags: the label set is inferred from the tags."""
    from mtlbench.tasks import registry
    from mtlbench.tasks.sources import load_task

    rows = "words\ttags\n" + "alice saw bob\tB-PER O B-PER\nthe park\tO B-LOC\n" * 4
    for split in ("train", "dev"):
        (tmp_path / f"{split}.tsv").write_text(rows)
    (tmp_path / "ner.toml").write_text('kind = "token_iob"\n[sources.files]\ntrain = "train.tsv"\ndev = "dev.tsv"\n'
                                       'columns = { tokens = "words" }\n')
    data = load_task("files", registry.find(str(tmp_path / "ner.toml")))
    assert data.labels == ("O", "B-LOC", "B-PER") and data.label_origin == "inferred from the training split"
    assert data.rows["train"][0] == {"tokens": ["alice", "saw", "bob"], "tags": [2, 0, 2]}


def test_representation_level_gradients_read_the_output_states_of_token_tasks_and_refuse_mlm(tmp_path, capsys):
    """Token kinds' heads read the encoder's output states: on = "representation" takes those, of
    different lengths per task (zero-padded rows), and trains; an MLM task (its decoder is the
    encoder's embedding) is refused at load, naming the key."""
    recipes = '[[recipes]]\nname = "mgda_rep"\nsampler = "joint"\ncombiner = { name = "mgda", on = "representation" }\n'
    out = tmp_path / "out"
    suite = _suite(tmp_path, 'tasks = ["entity", "ner", "sst"]', recipes)
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--jobs", "1"]) == 0
    record = json.loads((out / "suite.mgda_rep-seed0.json").read_text())
    combiner = record["strategies"]["combiner"]
    assert combiner["steps"] > 0 and sum(combiner["mean_weights"].values()) == pytest.approx(1.0)
    assert all(math.isfinite(v) for task in ("entity", "ner", "sst") for v in record["metrics"][task].values())
    suite = _suite(tmp_path, 'tasks = ["mlm", "ner"]', recipes)
    assert main(["run", str(suite), "--out", str(tmp_path / "refused"), "--no-progress"]) == 2
    assert "combiner.on: 'representation' cannot serve MLM task(s) mlm" in capsys.readouterr().err
