"""[tune], [front], a recipe's own train values and search options, the held-out validation split,
and the synthetic dials: what they read, and the one-line errors for what they refuse."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
from mtlbench.bench import holdout
from mtlbench.bench.config import Suite, load_suite
from mtlbench.tasks import synthetic
from mtlbench.tasks.errors import UserError
from mtlbench.tasks.registry import find
from mtlbench.tasks.sources import load_task

from tests.conftest import SMALL_DATA, TINY_ENCODER


def _suite(**changes) -> Suite:
    table = {"name": "t", "tasks": ["sst", "quora", "sts"], "synthetic": SMALL_DATA, "tiny_encoder": TINY_ENCODER,
             "defaults": {"sampler": "joint"},
             "recipes": [{"name": "sum"}, {"name": "cagrad", "combiner": "cagrad",
                                          "tune": {"combiner.c": {"low": 0.1, "high": 0.9}}}]}
    table.update(changes)
    return Suite.from_dict(table)


def test_tune_section_reads_space_and_defaults_to_lr_around_the_suites():
    suite = _suite(train={"lr": 1e-3}, tune={"trials": 5})
    assert suite.tune.trials == 5 and list(suite.tune.space) == ["lr"]
    assert suite.tune.space["lr"].low == pytest.approx(1e-4) and suite.tune.space["lr"].log
    assert suite.recipes[1].space["combiner.c"].high == 0.9
    spaced = _suite(tune={"space": {"weight_decay": {"low": 0, "high": 0.1}}})
    assert list(spaced.tune.space) == ["weight_decay"] and not spaced.tune.space["weight_decay"].log


@pytest.mark.parametrize("tune, recipe_tune, message", [
    ({"space": {"epochs": {"low": 1, "high": 3}}}, None, "'epochs' is not a setting tune searches"),
    ({"space": {"lr": {"low": 1e-2, "high": 1e-3}}}, None, "low must be below high"),
    ({"space": {"lr": {"low": 0, "high": 1e-3, "log": True}}}, None, "a log range needs low > 0"),
    ({"space": {"dropout": {"low": 0, "high": 1.5}}}, None, "dropout must be in [0, 1)"),
    ({"tune_fraction": 0.9}, None, "tune_fraction"),
    ({"objective": "median"}, None, "objective must be"),
    ({"trails": 3}, None, "unknown key 'trails'"),
    ({}, {"combiner.k": {"low": 0, "high": 1}}, "has no numeric option 'k'"),
    ({}, {"fgm.epsilon": {"low": 0, "high": 1}}, "names no strategy of the recipe"),
    ({}, {"combiner.c": {"low": -5, "high": 0.5}}, "combiner.c"),
])
def test_bad_tune_settings_name_their_key(tune, recipe_tune, message):
    recipes = [{"name": "sum"}, {"name": "cagrad", "combiner": "cagrad", **({"tune": recipe_tune} if recipe_tune
                                                                           else {})}]
    with pytest.raises(UserError) as error:
        _suite(tune=tune, recipes=recipes)
    assert message in str(error.value)


def test_a_recipe_sets_its_own_train_values_and_only_those():
    suite = _suite(recipes=[{"name": "sum"}, {"name": "slow", "train": {"lr": 2e-5, "epochs": 2}}])
    assert suite.train_for(suite.recipes[1]).lr == 2e-5 and suite.train_for(suite.recipes[1]).epochs == 2
    assert suite.train_for(suite.recipes[0]) == suite.train
    assert suite.recipes[1].resolved()["train"] == {"lr": 2e-5, "epochs": 2}
    assert "train" not in suite.recipes[0].resolved()  # older records' config hashes are unchanged
    for bad, message in (({"max_length": 64}, "cannot differ between recipes"), ({"lr": -1.0}, "lr must be > 0")):
        with pytest.raises(UserError, match=message):
            _suite(recipes=[{"name": "sum", "train": bad}])


def test_with_values_replaces_train_settings_and_strategy_options():
    suite = _suite()
    changed = suite.recipes[1].with_values({"lr": 3e-3, "combiner.c": 0.25})
    assert changed.train == {"lr": 3e-3} and changed.combiner.options.c == 0.25
    assert suite.recipes[1].combiner.options.c != 0.25  # the recipe itself is unchanged


def test_front_points_follow_the_baseline_and_the_selection():
    suite = _suite(front={"divisions": 2}, baseline="sum")
    points = [r for r in suite.recipes if r.front is not None]
    assert [p.name for p in points] == ["front@2-0-0", "front@1-1-0", "front@1-0-1", "front@0-2-0",
                                        "front@0-1-1", "front@0-0-2"]
    assert points[1].combiner.options.weights == {"sst": 1.5, "quora": 1.5, "sts": 0.0}
    assert len(suite.compared) == 2
    assert len(suite.with_recipes(["sum"]).recipes) == 7 and len(suite.with_recipes(["cagrad"]).recipes) == 1
    with pytest.raises(UserError, match="at least two tasks"):
        _suite(tasks=["sst"], front={}, recipes=[{"name": "sum"}])


def test_holdout_partitions_train_and_is_stratified():
    rows = [{"text": str(i), "label": i % 5 if i < 400 else 0} for i in range(500)]
    spec = find("sst")
    kept, held = holdout.carve(rows, spec, 0.2, seed=3)
    assert sorted(kept + held) == list(range(500)) and not set(kept) & set(held)
    assert len(held) == pytest.approx(100, abs=3)
    counts, held_counts = Counter(r["label"] for r in rows), Counter(rows[i]["label"] for i in held)
    for label, count in counts.items():  # every class held out in proportion
        assert held_counts[label] == round(0.2 * count)
    assert holdout.carve(rows, spec, 0.2, seed=3) == (kept, held)
    assert holdout.carve(rows, spec, 0.2, seed=4) != (kept, held)


def test_tuning_never_sees_dev_or_test(tiny_encoder_path):
    """The trials' validation rows are train rows, by index; dev and test are not read for scoring."""
    from mtlbench.bench.prepared import prepare
    from mtlbench.bench.tuning import settings_of, tuning_suite

    suite = _suite(tune={"tune_fraction": 0.25})
    tuning = tuning_suite(suite, settings_of(suite))
    prepared = prepare(tuning, log=lambda m: None)
    full = {t: load_task("synthetic", suite.specs[t], None, suite.synthetic) for t in suite.tasks}
    for task, split_ids in prepared.carved_from_train.items():
        train_ids, dev_ids = set(split_ids["train"]), set(split_ids["dev"])
        assert not train_ids & dev_ids and train_ids | dev_ids == set(range(len(full[task].rows["train"])))
        assert prepared.data[task].rows["dev"] == [full[task].rows["train"][i] for i in split_ids["dev"]]
        assert "test" not in prepared.data[task].rows
        assert prepared.splits == ("train", "dev")
    assert tuning.resolved()["validation"] == {"split": "carved", "tune_fraction": 0.25, "seed": 0}


def test_the_dials_turn_what_they_say():
    config = synthetic.SyntheticConfig(**SMALL_DATA)
    plain = synthetic.generate("sts", config).rows
    scaled = synthetic.turn_dials("sts", plain, {"scale": 100}, 0, "here")
    assert [r["label"] for r in scaled["dev"]] == pytest.approx([100 * r["label"] for r in plain["dev"]])
    small = synthetic.turn_dials("sts", plain, {"train_fraction": 0.1}, 0, "here")
    assert len(small["train"]) == round(0.1 * len(plain["train"])) and len(small["dev"]) == len(plain["dev"])
    sst = synthetic.generate("sst", config).rows
    noisy = synthetic.turn_dials("sst", sst, {"label_noise": 0.3}, 0, "here")
    flipped = sum(a["label"] != b["label"] for a, b in zip(sst["train"], noisy["train"]))
    assert 0.2 < flipped / len(sst["train"]) < 0.4
    assert noisy["dev"] == sst["dev"] and noisy["test"] == sst["test"]  # scored on the true labels
    polarity = synthetic.generate("polarity", config).rows
    turned = synthetic.turn_dials("polarity", polarity, {"direction": -1}, 0, "here")
    assert [r["text"] for r in turned["train"]] == [r["text"] for r in polarity["train"]]
    assert all(a["label"] == 1 - b["label"] for a, b in zip(turned["train"], polarity["train"]))


@pytest.mark.parametrize("generator, dials, message", [
    ("sst", {"scale": 100}, "only the sts generator's regression target scales"),
    ("sts", {"label_noise": 0.2}, "apply to the classification generators"),
    ("sst", {"direction": -1}, "only the polarity generator's label turns round"),
    ("sst", {"train_fraction": 0}, "train_fraction in (0, 1]"),
    ("sst", {"label_noise": "lots"}, "expected a number"),
])
def test_bad_dials_are_refused(generator, dials, message):
    rows = synthetic.generate(generator, synthetic.SyntheticConfig(**SMALL_DATA)).rows
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        synthetic.turn_dials(generator, rows, dials, 0, "suite.toml [tasks.x].sources.synthetic")


def test_the_shipped_stress_suites_load_with_their_dial():
    dials = {"stress-loss-scale": ("sts_x100", "scale"), "stress-size": ("sst_small", "train_fraction"),
             "stress-noise": ("sst_noisy", "label_noise"), "stress-conflict": ("polarity_flipped", "direction")}
    for name, (task, dial) in dials.items():
        suite = load_suite(name)
        assert dial in suite.specs[task].sources["synthetic"] and suite.tune is not None
        assert dataclasses.asdict(suite.synthetic)["sst_train"] == 1000
    assert Path(load_suite("fair-comparison").source).name == "fair-comparison.toml"


def test_objective_is_the_mean_or_delta_m_and_an_undefined_metric_counts_zero():
    from mtlbench.bench.tuning import objective_value, settings_of

    suite = _suite()
    metrics = {"sst": {"accuracy": 0.5}, "quora": {"accuracy": 0.7}, "sts": {"pearson": None}}
    mean = dataclasses.replace(suite, tune=settings_of(suite))
    assert objective_value(mean, metrics, None) == pytest.approx(0.4)
    delta = dataclasses.replace(suite, tune=dataclasses.replace(settings_of(suite), objective="delta_m"))
    reference = {"sst": 0.4, "quora": 0.7, "sts": 0.5}
    assert objective_value(delta, metrics, reference) == pytest.approx(100 * (0.25 + 0 - 1.0) / 3)


def test_a_storage_password_never_reaches_a_log_or_record():
    from mtlbench.bench.tuning import shown_url

    assert shown_url("postgresql://me:secret@db.example:5432/studies") == "postgresql://me:***@db.example:5432/studies"
    assert shown_url("sqlite:////tmp/out/tune/study.db") == "sqlite:////tmp/out/tune/study.db"


def test_a_pruned_trial_record_round_trips(tmp_path):
    from mtlbench.bench import records

    from tests.bench.test_records_tables import RECORDS

    values = {k: v for k, v in RECORDS[0].to_dict().items() if k in records.RunRecord.IDENTITY}
    pruned = records.RunRecord.from_dict({**values, "status": "pruned", "pruned": {"epoch": 1, "value": 0.3},
                                          "trial": {"recipe": "sum", "number": 4, "parameters": {"lr": 1e-3}},
                                          "history": []})
    pruned.write(tmp_path / "p.json")
    (loaded,) = records.load_records(tmp_path)
    assert loaded.status == "pruned" and not loaded.finished and loaded.trial["number"] == 4
    with pytest.raises(UserError, match="missing key 'trial'"):
        records.RunRecord.from_dict({**values, "status": "pruned", "pruned": {"epoch": 1, "value": 0.3}})
