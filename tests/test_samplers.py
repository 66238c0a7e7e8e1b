import random
import sys
from collections import Counter

import pytest

from strategies import registry
from tasks.errors import UserError

BATCHES = {"sst": 3, "quora": 7, "sts": 2}
SIZES = {"sst": 90, "quora": 210, "sts": 60}


def make(name, **options):
    cls = registry.get("sampler", name)
    return cls(registry.make_options(cls, options, "test"), BATCHES, SIZES, random.Random(0))


def test_round_robin_cycles_tasks_then_drains_the_largest():
    schedule = list(make("round_robin").epoch())
    assert schedule == [("sst",), ("quora",), ("sts",), ("sst",), ("quora",), ("sts",), ("sst",), ("quora",),
                        ("quora",), ("quora",), ("quora",), ("quora",)]
    assert Counter(t for (t,) in schedule) == Counter(BATCHES)  # every batch used exactly once


@pytest.mark.parametrize("length, expected", [("balanced", 4), ("min", 2), ("max", 7)])
def test_joint_uses_every_task_every_step(length, expected):
    sampler = make("joint", steps_per_epoch=length)
    schedule = list(sampler.epoch())
    assert len(schedule) == sampler.steps_per_epoch() == expected
    assert all(step == ("sst", "quora", "sts") for step in schedule)
    assert not sampler.single_task


def test_joint_rejects_an_unknown_epoch_length():
    with pytest.raises(UserError, match="steps_per_epoch"):
        make("joint", steps_per_epoch="longest")


def test_random_samplers_spend_the_same_task_batch_budget_as_round_robin():
    for name in ("proportional", "temperature", "uniform"):
        assert make(name).steps_per_epoch() == sum(BATCHES.values())


def test_proportional_probabilities_follow_sizes():
    assert make("proportional").probabilities() == pytest.approx({"sst": 0.25, "quora": 210 / 360, "sts": 60 / 360})


def test_temperature_interpolates_between_proportional_and_uniform():
    assert make("temperature", temperature=1.0).probabilities() == pytest.approx(make("proportional").probabilities())
    assert make("temperature", temperature=1e9).probabilities() == pytest.approx(make("uniform").probabilities())
    p = make("temperature", temperature=2.0).probabilities()
    total = sum(s ** 0.5 for s in SIZES.values())
    assert p == pytest.approx({t: s ** 0.5 / total for t, s in SIZES.items()})


def test_temperature_must_be_positive():
    with pytest.raises(UserError, match="temperature must be > 0"):
        make("temperature", temperature=0.0)


def test_random_draws_follow_the_probabilities_and_the_seed():
    sampler = make("proportional")
    sampler.batches_per_epoch = {"sst": 3000, "quora": 7000, "sts": 2000}
    counts = Counter(t for (t,) in sampler.epoch())
    n = sum(counts.values())
    for task, p in sampler.probabilities().items():
        assert counts[task] / n == pytest.approx(p, abs=0.015)
    assert list(make("uniform").epoch()) == list(make("uniform").epoch())  # same seed, same schedule


def test_every_in_tree_module_is_discovered_and_registers():
    expected = {
        "sampler": {"joint", "proportional", "round_robin", "temperature", "uniform"},
        "combiner": {"sum", "weighted"},
        "freezing": {"none"},
    }
    for axis, names in expected.items():
        assert names <= set(registry.available(axis))
    for cls in (c for axis in registry.AXES for c in registry.available(axis).values()):
        assert cls.__doc__ and sys.modules[cls.__module__].__doc__, f"{cls.__name__}: docstring citing its source"


def test_only_trains_the_named_task_one_pass_per_epoch():
    sampler = make("only", task="quora")
    assert list(sampler.epoch()) == [("quora",)] * 7 == [("quora",)] * sampler.steps_per_epoch()
    with pytest.raises(UserError, match="unknown task 'sts2'.*did you mean 'sts'"):
        make("only", task="sts2")
