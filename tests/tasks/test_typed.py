"""tasks.typed: the one coercion of TOML tables into typed settings and strategy options."""

from dataclasses import dataclass, field
from typing import Literal

import pytest
from mtlbench.tasks.errors import UserError, check_keys, nearest
from mtlbench.tasks.typed import from_table


@dataclass(frozen=True)
class Example:
    rate: float = 0.5
    count: int = 1
    name: str = "x"
    flag: bool = False
    mode: Literal["fast", "slow"] = "fast"
    weights: dict[str, float] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")


def test_values_become_the_declared_types():
    made = from_table(Example, {"rate": 2, "count": 3, "mode": "slow", "weights": {"a": 1.0}, "order": ["b"]}, "t")
    assert made == Example(2.0, 3, "x", False, "slow", {"a": 1.0}, ["b"])
    assert isinstance(made.rate, float)  # an integer where a float is declared is that float


@pytest.mark.parametrize("table, message", [
    ({"rate": "fast"}, "t.rate: expected float, got 'fast'"),
    ({"count": True}, "t.count: expected int, got True"),  # a bool is never an int
    ({"count": 1.5}, "t.count: expected int, got 1.5"),
    ({"rate": float("nan")}, "t.rate: expected a finite number, got nan"),
    ({"rate": float("inf")}, "t.rate: expected a finite number, got inf"),
    ({"flag": 1}, "t.flag: expected bool, got 1"),
    ({"mode": "fats"}, "t.mode: mode must be one of ('fast', 'slow'), got 'fats' (did you mean 'fast'?)"),
    ({"weights": [1]}, "t.weights: expected a table, got [1]"),
    ({"order": "b"}, "t.order: expected a list, got 'b'"),
    ({"cuont": 1}, "t: unknown key 'cuont' (did you mean 'count'?)"),
    ({"count": -1}, "t: count must be >= 0, got -1"),  # the dataclass's own range check, named
])
def test_bad_values_name_their_key(table, message):
    with pytest.raises(UserError) as error:
        from_table(Example, table, "t")
    assert str(error.value) == message


def test_a_caller_words_the_unknown_key_itself():
    with pytest.raises(UserError, match=r"^opt: no option 'cuont' among count, flag"):
        from_table(Example, {"cuont": 1}, "opt", lambda key, fields: f"opt: no option '{key}' among "
                   f"{', '.join(sorted(fields)[:2])}")
    with pytest.raises(UserError, match="t: expected a table, got 3"):
        from_table(Example, 3, "t")


def test_nearest_prefers_a_known_synonym_and_check_keys_names_the_place():
    assert nearest("learning_rate", ["lr", "learning_rates"]) == " (did you mean 'lr'?)"
    assert nearest("tau", ["temperature", "tail"]) == " (did you mean 'temperature'?)"  # an option's synonym
    with pytest.raises(UserError, match=r"^where: unknown key 'epoch' \(did you mean 'epochs'\?\)$"):
        check_keys({"epoch": 1}, ("epochs", "lr"), "where")
