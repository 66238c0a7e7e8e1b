import random
import sys
from collections import Counter

import pytest
from mtlbench.strategies import registry
from mtlbench.tasks.errors import UserError

BATCHES = {"sst": 3, "quora": 7, "sts": 2}
SIZES = {"sst": 90, "quora": 210, "sts": 60}


def make(name, epochs=1, **options):
    cls = registry.get("sampler", name)
    return cls(registry.make_options(cls, options, "test"), BATCHES, SIZES, random.Random(0), epochs)


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


# --- annealed and scheduled sampling ------------------------------------------------------------

def test_annealed_sampling_goes_from_proportional_to_nearly_uniform():
    sampler = make("annealed", epochs=5)
    first, last = sampler.probabilities(1, 0.0), sampler.probabilities(5, 0.8)
    assert first == pytest.approx(make("proportional").probabilities())
    total = sum(size ** 0.2 for size in SIZES.values())
    assert last == pytest.approx({task: size ** 0.2 / total for task, size in SIZES.items()})
    assert [sampler.alpha(e) for e in range(1, 6)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert make("annealed", epochs=1).alpha(1) == 1.0


def test_scheduled_weights_follow_the_expression_of_the_training_fraction():
    sampler = make("scheduled", epochs=2, weights={"sst": "1 - t", "quora": "t", "sts": 0})
    assert sampler.varies_within_epoch
    assert sampler.probabilities(1, 0.0) == {"sst": 1.0, "quora": 0.0, "sts": 0.0}
    assert sampler.probabilities(2, 0.75) == pytest.approx({"sst": 0.25, "quora": 0.75, "sts": 0.0})
    sampler.batches_per_epoch = {"sst": 2000, "quora": 2000, "sts": 0}  # 4000 steps an epoch
    first, second = list(sampler.epoch(1)), list(sampler.epoch(2))
    quora_share = [sum(step == ("quora",) for step in part) / len(part)
                   for part in (first[:2000], first[2000:], second[:2000], second[2000:])]
    # t over the quarters: means 0.125, 0.375, 0.625, 0.875
    assert quora_share == pytest.approx([0.125, 0.375, 0.625, 0.875], abs=0.03)
    assert ("sts",) not in first + second


def test_scheduled_unnamed_tasks_weigh_one_and_functions_work():
    sampler = make("scheduled", weights={"sst": "exp(-3 * t) + sqrt(t) * max(t, 0.5)"})
    assert sampler.task_weights(1, 0.0) == {"sst": 1.0, "quora": 1.0, "sts": 1.0}


@pytest.mark.parametrize("expression, message", [
    ("__import__('os').system('echo hi')", "is not allowed"),
    ("t.__class__", "is not allowed"),
    ("open('x')", "is not allowed"),
    ("[t]", "is not allowed"),
    ("x + 1", "unknown name 'x'"),
    ("1 +", "cannot parse"),
    ("log(t)", "at t = 0"),  # log(0)
    ("t - 0.5", "< 0 at t = 0"),
    ("10.0 ** (1000 * (t + 1))", "at t = 0"),  # overflow
])
def test_scheduled_rejects_unsafe_or_invalid_expressions_naming_the_task(expression, message):
    with pytest.raises(UserError, match=rf"weights\.quora.*{message}"):
        make("scheduled", weights={"quora": expression})


def test_scheduled_rejects_unknown_tasks_and_all_zero_weights():
    with pytest.raises(UserError, match="unknown task 'sst2'.*did you mean 'sst'"):
        make("scheduled", weights={"sst2": "1"})
    with pytest.raises(UserError, match="every task's weight is 0 at t = 0.5"):
        make("scheduled", weights={"sst": "abs(t - 0.5)", "quora": "abs(t - 0.5)", "sts": "abs(2 * t - 1)"})


def test_a_bad_schedule_in_a_suite_file_stops_the_run_naming_file_recipe_and_key(tmp_path, capsys):
    from mtlbench.bench.cli import main

    from tests.conftest import write_suite
    suite = write_suite(tmp_path / "s.toml", '[[recipes]]\nname = "sched"\n'
                        'sampler = { name = "scheduled", weights = { sts = "1 - 2 * t" } }\n')
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "s.toml recipes[0]: sampler.weights.sts: '1 - 2 * t' is -0.002 < 0 at t = 0.501" in error
    assert not (tmp_path / "out").exists()
