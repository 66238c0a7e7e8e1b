"""Suites (TOML) and recipes: parsed, validated and fully resolved before anything trains; a `Suite`
is immutable once loaded.

A suite file:

    name = "quick"
    tasks = ["sst", "quora", "sts"]   # registry names or task .toml paths; or [tasks.NAME] tables
    data = "synthetic"          # which of each task's sources (tasks.source_types)
    data_dir = "..."            # where relative data paths resolve (relative to this file)
    test = false                # score each task's test split at its best dev epoch
    model = "tiny"              # or any Hugging Face name / local path
    seeds = 1
    [train]      epochs, lr, batch_size, ...            (bench.settings.TrainSettings)
    [synthetic]  sizes and noise of the embedded data   (tasks.synthetic.SyntheticConfig)
    [tiny_encoder]                                      (bench.backbone.TinyEncoderConfig)
    [defaults]   recipe fields shared by every recipe
    baseline = "joint_sum"      # the recipe costs and significance are measured against (default: the first)
    [cost]       rounds and block size of the paired step-cost measurement  (CostSettings)
    [check]      tolerances of `mtlbench check`, [check.tasks.NAME] per task (CheckSettings)
    [checkpoints] enabled, keep, keep_best               (CheckpointSettings)
    [tune]       trials, tune_fraction, seed, objective, pruner, [tune.space]  (TuneSettings; bench.tuning)
    [front]      enabled, divisions: the static-weight sum over the task simplex  (FrontSettings; bench.front)
    [[recipes]]  name, sampler, combiner, regularizers, freezing, pooling, pair_head, tasks, train, tune
                 (tasks: a subset the recipe trains and scores alone; one task = a single-task baseline;
                 train: this recipe's own [train] values; tune: its strategy options `mtlbench tune`
                 searches, e.g. "combiner.c" = { low = 0.1, high = 0.9 })

A strategy is a name or a table `{ name = "...", option = value }`; its options are validated
once, here, into the strategy's typed `Options`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlbench import strategies
from mtlbench.bench.backbone import TINY, TinyEncoderConfig
from mtlbench.bench.data_quality import DEFAULT_MAX_UNKNOWN
from mtlbench.bench.model import PAIR_HEADS, POOLINGS, SINGLE_HEADS
from mtlbench.bench.settings import (
    MAX_SEED,
    MAX_SEEDS,
    RECIPE_TRAIN_KEYS,
    TUNABLE_TRAIN_KEYS,
    CheckpointSettings,
    CheckSettings,
    CheckTolerances,
    CostSettings,
    FrontSettings,
    SearchRange,
    TrackingSettings,
    TrainSettings,
    TuneSettings,
)
from mtlbench.bench.suites import find_suite, suite_names  # noqa: F401 - suite_names: part of this module's API
from mtlbench.strategies import registry
from mtlbench.tasks import registry as task_registry
from mtlbench.tasks.errors import UserError, check_keys, nearest
from mtlbench.tasks.names import check_name, check_task_name
from mtlbench.tasks.sources import choose_source
from mtlbench.tasks.spec import TaskSpec
from mtlbench.tasks.synthetic import SyntheticConfig
from mtlbench.tasks.typed import from_table

# The report calls the pair heads options 1-3.
PAIR_HEAD_ALIASES = {"option1": "cosine", "option2": "concat", "option3": "concat_product"}
MODEL_DEFAULTS = {"pooling": "mean", "pair_head": "concat_product"}
RECIPE_KEYS = ("name", "sampler", "combiner", "regularizers", "freezing", "pooling", "pair_head", "tasks", "train",
               "tune")
SUITE_KEYS = ("name", "description", "tasks", "data", "data_dir", "test", "model", "seeds", "train",
              "pretrained_train", "synthetic", "tiny_encoder", "defaults", "recipes", "baseline", "cost", "check",
              "checkpoints", "tune", "front", "tracking", "max_unknown")
STRATEGY_AXES = ("sampler", "combiner", "freezing")  # "regularizers.NAME" besides
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainSettings))


@dataclass(frozen=True)
class StrategySpec:
    name: str
    options: Any  # the strategy's Options instance: validated, every default filled in

    @classmethod
    def make(cls, axis: str, name: str, options: dict | None = None, where: str | None = None) -> StrategySpec:
        """A strategy by name with its options validated (a UserError naming `where` if not)."""
        where = where or f"{axis} '{name}'"
        return cls(name, registry.make_options(registry.get(axis, name, where), options or {}, where))

    def as_dict(self) -> dict:
        return {"name": self.name, "options": dataclasses.asdict(self.options)}


@dataclass(frozen=True)
class Recipe:
    name: str
    sampler: StrategySpec
    combiner: StrategySpec
    regularizers: tuple[StrategySpec, ...]
    freezing: StrategySpec
    pooling: str
    pair_head: str
    position: int = 0  # place in the suite file; kept when --recipes selects a subset
    tasks: tuple[str, ...] | None = None  # None: every task of the suite
    train: dict[str, Any] = field(default_factory=dict)  # this recipe's own [train] values (RECIPE_TRAIN_KEYS)
    space: dict[str, SearchRange] = field(default_factory=dict)  # strategy options `tune` searches
    tuned: dict[str, Any] | None = None  # after `tune`: trials, best trial, parameters, budget
    front: dict[str, Any] | None = None  # a point of the scalarisation front: its weights
    trial: dict[str, Any] | None = None  # a tuning trial of `recipe`: study, number, parameters

    @property
    def single_task(self) -> str | None:
        """The task of a single-task baseline recipe, else None."""
        return self.tasks[0] if self.tasks is not None and len(self.tasks) == 1 else None

    def strategies(self) -> list[tuple[str, StrategySpec]]:
        """(axis, spec) of every strategy the recipe names."""
        return ([("sampler", self.sampler), ("combiner", self.combiner), ("freezing", self.freezing)]
                + [("regularizer", r) for r in self.regularizers])

    def names(self) -> dict:
        return {"sampler": self.sampler.name, "combiner": self.combiner.name,
                "regularizers": [r.name for r in self.regularizers], "freezing": self.freezing.name,
                "pooling": self.pooling, "pair_head": self.pair_head,
                **({"tasks": list(self.tasks)} if self.tasks is not None else {})}

    def resolved(self) -> dict:
        return {"name": self.name, "sampler": self.sampler.as_dict(), "combiner": self.combiner.as_dict(),
                "regularizers": [r.as_dict() for r in self.regularizers], "freezing": self.freezing.as_dict(),
                "pooling": self.pooling, "pair_head": self.pair_head,
                "tasks": list(self.tasks) if self.tasks is not None else None,
                **({"train": dict(self.train)} if self.train else {})}  # older records have no key

    def strategy(self, path: str) -> tuple[str, StrategySpec, int | None]:
        """(axis, spec, regulariser index) of a search key's strategy: "combiner.c" names the combiner,
        "regularizers.fgm.epsilon" the regulariser named fgm."""
        head, _, _ = path.rpartition(".")
        if head in STRATEGY_AXES:
            return head, getattr(self, head), None
        axis, _, name = head.partition(".")
        if axis == "regularizers":
            for i, spec in enumerate(self.regularizers):
                if spec.name == name:
                    return "regularizer", spec, i
        raise KeyError(path)

    def with_values(self, values: dict[str, Any]) -> Recipe:
        """The recipe with [train] values and strategy options replaced (a trial's, or the best):
        keys are train settings ("lr") or strategy options ("combiner.c")."""
        train = {**self.train, **{k: v for k, v in values.items() if "." not in k}}
        recipe = dataclasses.replace(self, train=train)
        for path, value in values.items():
            if "." not in path:
                continue
            axis, spec, index = recipe.strategy(path)
            changed = StrategySpec.make(axis, spec.name, {**dataclasses.asdict(spec.options),
                                                         path.rpartition(".")[2]: value})
            if index is None:
                recipe = dataclasses.replace(recipe, **{axis: changed})
            else:
                recipe = dataclasses.replace(recipe, regularizers=tuple(
                    changed if i == index else r for i, r in enumerate(recipe.regularizers)))
        return recipe


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    specs: dict[str, TaskSpec]  # task name -> its definition as declared, in the suite's order
    data: str
    data_dir: str | None
    model: str
    seeds: tuple[int, ...]
    train: TrainSettings
    synthetic: SyntheticConfig
    tiny_encoder: TinyEncoderConfig
    recipes: tuple[Recipe, ...]
    source: str  # the file it came from
    test: bool = False  # score the test split at each task's best dev epoch
    baseline: Recipe | None = None  # costs and significance are relative to it; kept when --recipes selects
    cost: CostSettings = field(default_factory=CostSettings)
    check: CheckSettings = field(default_factory=CheckSettings)
    checkpoints: CheckpointSettings = field(default_factory=CheckpointSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    tune: TuneSettings | None = None
    front: FrontSettings | None = None
    validation: str = "dev"  # "carved": dev is tune_fraction of train, held out (bench.tuning's trials)
    max_unknown: float = DEFAULT_MAX_UNKNOWN  # refuse a task whose train tokens are more unknown (bench.data_quality)

    @classmethod
    def from_dict(cls, table: dict, source: str = "<dict>", directory: str | Path | None = None,
                  **overrides) -> Suite:
        """A suite from a dict shaped like a suite file (`source` names it in errors; relative paths
        resolve against `directory`, default the working directory)."""
        named = table if not isinstance(table, dict) or "name" in table else {"name": "python", **table}
        return suite_from_dict(named, Path(directory or Path.cwd()) / source, overrides)

    @property
    def tasks(self) -> list[str]:
        return list(self.specs)

    def tasks_of(self, recipe: Recipe) -> list[str]:
        return list(recipe.tasks) if recipe.tasks is not None else self.tasks

    def train_for(self, recipe: Recipe) -> TrainSettings:
        """The [train] settings of the recipe's runs: the suite's, with the recipe's own values."""
        return dataclasses.replace(self.train, **recipe.train) if recipe.train else self.train

    @property
    def compared(self) -> tuple[Recipe, ...]:
        """The recipes a table compares: every recipe but the points of the scalarisation front."""
        return tuple(r for r in self.recipes if r.front is None)

    def with_recipes(self, names: list[str]) -> Suite:
        """The same suite with only the recipes named (each keeps its position and the baseline);
        the scalarisation front's points stay when the baseline is named (they are its weightings)."""
        known = [r.name for r in self.recipes]
        for name in names:
            if name not in known:
                raise UserError(f"unknown recipe '{name}'{nearest(name, known)}; suite '{self.name}' has: "
                                f"{', '.join(known)}")
        keep_front = self.baseline is not None and self.baseline.name in names
        return dataclasses.replace(self, recipes=tuple(r for r in self.recipes if r.name in names
                                                       or (keep_front and r.front is not None)))

    def resolved(self) -> dict:
        return {"name": self.name, "tasks": self.tasks, "data": self.data, "data_dir": self.data_dir, "test": self.test,
                "model": self.model, "seeds": list(self.seeds), "train": dataclasses.asdict(self.train),
                "baseline": self.baseline.name if self.baseline else None, "cost": dataclasses.asdict(self.cost),
                "check": self.check.as_dict(), "checkpoints": dataclasses.asdict(self.checkpoints),
                "tracking": dataclasses.asdict(self.tracking),
                "synthetic": self.synthetic.as_dict() if self.data == "synthetic" else None,
                "tiny_encoder": dataclasses.asdict(self.tiny_encoder) if self.model == TINY else None,
                "source": self.source,
                # only when set, so that records made before these existed keep their config hash
                **({"tune": self.tune.as_dict()} if self.tune else {}),
                **({"front": dataclasses.asdict(self.front)} if self.front else {}),
                **({"validation": {"split": self.validation, "tune_fraction": self.tune.tune_fraction,
                                   "seed": self.tune.seed}} if self.validation != "dev" else {})}


def load_suite(name_or_path: str, overrides: dict | None = None) -> Suite:
    """Parse and validate a suite file; `overrides` (from the CLI or the API) replace its keys."""
    path = find_suite(name_or_path)
    return suite_from_dict(task_registry.read_toml(path), path, overrides)


def suite_from_dict(raw: dict, path: Path, overrides: dict | None = None) -> Suite:
    """A suite from its table (a parsed file, or a dict in Python). `path` names it in errors and
    anchors relative paths (its folder). `overrides` replace top-level keys; the names of [train]
    settings (epochs, lr, threads, ...) replace those. One reader per section below."""
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a table of suite settings, got {raw!r}")
    raw = _with_overrides(copy.deepcopy(raw), path, overrides or {})
    where = str(path)
    check_keys(raw, SUITE_KEYS, where)
    specs = suite_tasks(raw.get("tasks", ["sst", "quora", "sts"]), path)
    data, test = _data(raw, specs, where), _flag(raw, "test", where)
    seeds, train = _seeds(raw, where), _train(raw, where)
    recipes = _recipes(raw, list(specs), where, dataclasses.asdict(train))
    baseline = _baseline(raw, recipes, where)
    tune = tune_settings(raw.get("tune"), train, f"{where} [tune]")
    front = from_table(FrontSettings, raw["front"], f"{where} [front]") if "front" in raw else None
    if front is not None and front.enabled:
        if len(specs) < 2:
            raise UserError(f"{where} [front]: the scalarisation front needs at least two tasks")
        recipes += front_points(baseline, list(specs), front, len(recipes))
    cost = from_table(CostSettings, raw.get("cost", {}), f"{where} [cost]")
    checkpoints = from_table(CheckpointSettings, raw.get("checkpoints", {}), f"{where} [checkpoints]")
    tracking = from_table(TrackingSettings, raw.get("tracking", {}), f"{where} [tracking]")
    return Suite(
        name=check_name(raw.get("name", path.stem), f"{where}: name"), description=raw.get("description", ""),
        specs=specs, data=data, data_dir=raw.get("data_dir"), model=raw.get("model", TINY), seeds=seeds,
        train=train, synthetic=from_table(SyntheticConfig, raw.get("synthetic", {}), f"{where} [synthetic]"),
        tiny_encoder=from_table(TinyEncoderConfig, raw.get("tiny_encoder", {}), f"{where} [tiny_encoder]"),
        recipes=recipes, source=str(path), test=test, baseline=baseline, cost=cost,
        check=_check_settings(raw.get("check", {}), list(specs), f"{where} [check]"), checkpoints=checkpoints,
        tracking=tracking, tune=tune, front=front, max_unknown=_share(raw, "max_unknown", DEFAULT_MAX_UNKNOWN, where),
    )


# --- the sections ---------------------------------------------------------------------------------

def _with_overrides(raw: dict, path: Path, overrides: dict) -> dict:
    """`raw` with data_dir anchored at the suite's folder and the overrides applied."""
    if isinstance(raw.get("data_dir"), str):  # relative to the suite file; a --data-dir to the working directory
        raw["data_dir"] = str(path.parent / raw["data_dir"])
    for key, value in overrides.items():
        if value is None:
            continue
        if key in TRAIN_KEYS and key not in SUITE_KEYS:
            if not isinstance(raw.setdefault("train", {}), dict):
                raise UserError(f"{path} [train]: expected a table, got {raw['train']!r}")
            raw["train"][key] = value
            if isinstance(raw.get("pretrained_train"), dict):
                raw["pretrained_train"].pop(key, None)  # an explicit override wins over both
        elif key in SUITE_KEYS:
            raw[key] = value
        else:
            raise UserError(f"override '{key}': not a suite key or [train] setting"
                            f"{nearest(key, SUITE_KEYS + TRAIN_KEYS)}")
    return raw


def _data(raw: dict, specs: dict[str, TaskSpec], where: str) -> str:
    data = raw.get("data", "synthetic")
    if not isinstance(data, str):
        raise UserError(f"{where}: data: expected a source name, got {data!r}")
    for spec in specs.values():
        choose_source(spec, data)
    return data


def _flag(raw: dict, key: str, where: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise UserError(f"{where}: {key}: expected true or false, got {value!r}")
    return value


def _share(raw: dict, key: str, default: float, where: str) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise UserError(f"{where}: {key}: expected a share from 0 to 1, got {value!r}")
    return float(value)


def _seeds(raw: dict, where: str) -> tuple[int, ...]:
    seeds = raw.get("seeds", 1)
    count = seeds if isinstance(seeds, int) and not isinstance(seeds, bool) else len(seeds) if isinstance(
        seeds, list) else 0
    if count > MAX_SEEDS:
        raise UserError(f"{where}: seeds: {count} seeds is more than the {MAX_SEEDS:,} a suite may run")
    seeds = list(range(seeds)) if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds)):
        raise UserError(f"{where}: seeds must be a positive count or a list of integers from 0 to {MAX_SEED}, "
                        f"got {raw.get('seeds')!r}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{where}: seeds lists a seed twice: {seeds!r} (the same seed gives the same run)")
    return tuple(seeds)


def _train(raw: dict, where: str) -> TrainSettings:
    """[train], with [pretrained_train] over it when the model is a real checkpoint, not the tiny
    encoder: one suite then holds both the offline settings and those of its paper (e.g. lr 1e-5)."""
    pretrained = raw.get("pretrained_train", {})
    if not isinstance(pretrained, dict):
        raise UserError(f"{where} [pretrained_train]: expected a table, got {pretrained!r}")
    if not isinstance(raw.get("train", {}), dict):
        raise UserError(f"{where} [train]: expected a table, got {raw['train']!r}")
    check_keys(pretrained, TRAIN_KEYS, f"{where} [pretrained_train]")
    table = {**raw.get("train", {}), **(pretrained if raw.get("model", TINY) != TINY else {})}
    train = from_table(TrainSettings, table, f"{where} [train]")
    _choice(train.single_head, SINGLE_HEADS, f"{where} [train].single_head")
    return train


def _recipes(raw: dict, suite_tasks: list[str], where: str, train_table: dict) -> tuple[Recipe, ...]:
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict):
        raise UserError(f"{where} [defaults]: expected a table, got {defaults!r}")
    check_keys(defaults, RECIPE_KEYS[1:], f"{where} [defaults]")
    entries = raw.get("recipes") or []
    if not entries:
        raise UserError(f"{where}: no [[recipes]]")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"{where}: recipes: expected [[recipes]] tables, got {entries!r}")
    recipes = tuple(_recipe(e, defaults, f"{where} recipes[{i}]", suite_tasks, i, train_table)
                    for i, e in enumerate(entries))
    seen = set()
    for recipe in recipes:
        if recipe.name in seen:
            raise UserError(f"{where}: two recipes named '{recipe.name}'")
        seen.add(recipe.name)
    return recipes


def _recipe(entry: dict, defaults: dict, where: str, suite_tasks: list[str], position: int, train_table: dict
            ) -> Recipe:
    merged = {**strategies.DEFAULT_RECIPE, **MODEL_DEFAULTS, **defaults, **entry}
    check_keys(merged, RECIPE_KEYS, where)
    regularizers = merged["regularizers"]
    if not isinstance(regularizers, list):
        raise UserError(f"{where}.regularizers: expected a list, got {regularizers!r}")
    sampler = _strategy("sampler", merged["sampler"], f"{where}.sampler")
    combiner = _strategy("combiner", merged["combiner"], f"{where}.combiner")
    name = merged.get("name") or "+".join([sampler.name, combiner.name] +
                                          [r if isinstance(r, str) else r.get("name", "?") for r in regularizers])
    check_name(name, f"{where}.name")
    recipe = Recipe(
        name=name, sampler=sampler, combiner=combiner,
        regularizers=tuple(_strategy("regularizer", r, f"{where}.regularizers[{i}]")
                           for i, r in enumerate(regularizers)),
        freezing=_strategy("freezing", merged["freezing"], f"{where}.freezing"),
        pooling=_choice(merged["pooling"], POOLINGS, f"{where}.pooling"),
        pair_head=_choice(merged["pair_head"], PAIR_HEADS, f"{where}.pair_head", PAIR_HEAD_ALIASES),
        position=position, tasks=_recipe_tasks(merged.get("tasks"), suite_tasks, where),
        train=_recipe_train(merged.get("train", {}), train_table, f"{where}.train"),
    )
    return dataclasses.replace(recipe, space=_recipe_space(merged.get("tune", {}), recipe, f"{where}.tune"))


def _recipe_train(table: Any, suite_train: dict, where: str) -> dict[str, Any]:
    """A recipe's own [train] values: the keys of RECIPE_TRAIN_KEYS, checked as [train] checks them."""
    if not isinstance(table, dict):
        raise UserError(f"{where}: expected a table of [train] values, got {table!r}")
    for key in table:
        if key not in RECIPE_TRAIN_KEYS:
            raise UserError(f"{where}: '{key}' cannot differ between recipes{nearest(key, RECIPE_TRAIN_KEYS)}; "
                            f"a recipe may set {', '.join(RECIPE_TRAIN_KEYS)}")
    checked = from_table(TrainSettings, {**suite_train, **table}, where)
    return {k: getattr(checked, k) for k in table}


def _search_range(value: Any, where: str) -> SearchRange:
    return from_table(SearchRange, value, where)


def _recipe_space(table: Any, recipe: Recipe, where: str) -> dict[str, SearchRange]:
    """A recipe's own search dimensions: its strategies' numeric options, each range checked by
    building the strategy at both ends."""
    if not isinstance(table, dict):
        raise UserError(f"{where}: expected a table of \"axis.option\" = {{ low, high }}, got {table!r}")
    space = {}
    for path, value in table.items():
        try:
            axis, spec, _ = recipe.strategy(path)
        except KeyError:
            raise UserError(f"{where}: '{path}' names no strategy of the recipe; write \"combiner.OPTION\", "
                            "\"sampler.OPTION\", \"freezing.OPTION\" or \"regularizers.NAME.OPTION\"") from None
        option = path.rpartition(".")[2]
        current = getattr(spec.options, option, None)
        if option not in {f.name for f in dataclasses.fields(spec.options)} or not isinstance(
                current, int | float) or isinstance(current, bool):
            raise UserError(f"{where}.{path}: {axis} '{spec.name}' has no numeric option '{option}'")
        found = _search_range(value, f"{where}.\"{path}\"")
        for end in (found.low, found.high):  # both ends must be options the strategy takes
            try:
                recipe.with_values({path: int(end) if isinstance(current, int) else end})
            except UserError as error:
                raise UserError(f"{where}.\"{path}\": the range's end {end:g} is refused: {error}") from None
        space[path] = found
    return space


def tune_settings(table: Any, train: TrainSettings, where: str) -> TuneSettings | None:
    """[tune]; its space's keys are [train] settings (default: lr from a tenth to ten times the suite's)."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise UserError(f"{where}: expected a table, got {table!r}")
    table = dict(table)
    raw_space = table.pop("space", {"lr": {"low": train.lr / 10, "high": train.lr * 10, "log": True}})
    if not isinstance(raw_space, dict) or not raw_space:
        raise UserError(f"{where}.space: expected a table of setting = {{ low, high, log }}, got {raw_space!r}")
    space = {}
    for key, value in raw_space.items():
        if key not in TUNABLE_TRAIN_KEYS:
            raise UserError(f"{where}.space: '{key}' is not a setting tune searches{nearest(key, TUNABLE_TRAIN_KEYS)}; "
                            f"searched: {', '.join(TUNABLE_TRAIN_KEYS)} (a recipe adds its strategy options with "
                            "its own tune = {...})")
        space[key] = _search_range(value, f"{where}.space.{key}")
        for end in (space[key].low, space[key].high):
            from_table(TrainSettings, {**dataclasses.asdict(train), key: end}, f"{where}.space.{key}")
    return dataclasses.replace(from_table(TuneSettings, table, where), space=space)


def front_points(baseline: Recipe, tasks: list[str], front: FrontSettings, first_position: int
                 ) -> tuple[Recipe, ...]:
    """The baseline recipe with the static-weight sum at every point of the simplex grid (bench.front)."""
    from mtlbench.bench.front import simplex_grid

    divisions = front.divisions_for(len(tasks))
    points = []
    for i, counts in enumerate(simplex_grid(len(tasks), divisions)):
        weights = {t: len(tasks) * c / divisions for t, c in zip(tasks, counts)}
        combiner = StrategySpec.make("combiner", registry.scalarisation(), {"weights": weights})
        points.append(dataclasses.replace(
            baseline, name="front@" + "-".join(str(c) for c in counts), combiner=combiner,
            position=first_position + i, space={}, front={"weights": weights, "grid": list(counts),
                                                          "divisions": divisions}))
    return tuple(points)


def _strategy(axis: str, value: Any, where: str) -> StrategySpec:
    if isinstance(value, str):
        name, options = value, {}
    elif isinstance(value, dict) and isinstance(value.get("name"), str):
        name, options = value["name"], {k: v for k, v in value.items() if k != "name"}
    else:
        raise UserError(f"{where}: expected a {axis} name or a table with 'name', got {value!r}")
    return StrategySpec.make(axis, name, options, where)


def _choice(value: Any, choices, where: str, aliases=None) -> str:
    value = (aliases or {}).get(value, value)
    if value not in choices:
        raise UserError(f"{where}: unknown value '{value}'{nearest(str(value), choices)}; "
                        f"choose from {', '.join(choices)}")
    return value


def _recipe_tasks(value: Any, suite_tasks: list[str], where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise UserError(f"{where}.tasks: expected a non-empty list of the suite's task names, got {value!r}")
    for task in value:
        if task not in suite_tasks:
            raise UserError(f"{where}.tasks: '{task}' is not a task of the suite{nearest(task, suite_tasks)}; "
                            f"its tasks: {', '.join(suite_tasks)}")
    if len(set(value)) != len(value):
        raise UserError(f"{where}.tasks: a task is named twice in {value!r}")
    return tuple(t for t in suite_tasks if t in value)  # the suite's order


def _baseline(raw: dict, recipes: tuple[Recipe, ...], where: str) -> Recipe:
    name = raw.get("baseline", recipes[0].name)
    baseline = next((r for r in recipes if r.name == name), None)
    if baseline is None:
        raise UserError(f"{where}: baseline = {name!r} is not a recipe of the suite"
                        f"{nearest(str(name), [r.name for r in recipes])}")
    if baseline.tasks is not None:
        raise UserError(f"{where}: baseline recipe '{baseline.name}' trains a subset of the tasks; "
                        "costs and significance need a baseline that trains them all")
    return baseline


def _check_settings(table: Any, tasks: list[str], where: str) -> CheckSettings:
    if not isinstance(table, dict):
        raise UserError(f"{where}: expected a table, got {table!r}")
    table = dict(table)
    per_task = table.pop("tasks", {})
    allow_missing = table.pop("allow_missing", False)
    if not isinstance(allow_missing, bool):
        raise UserError(f"{where}.allow_missing: expected true or false, got {allow_missing!r}")
    tolerances = from_table(CheckTolerances, table, where)
    if not isinstance(per_task, dict):
        raise UserError(f"{where}.tasks: expected [check.tasks.NAME] tables, got {per_task!r}")
    overrides = {}
    for task, values in per_task.items():
        if task not in tasks:
            raise UserError(f"{where}.tasks.{task}: not a task of the suite{nearest(task, tasks)}")
        if not isinstance(values, dict):
            raise UserError(f"{where}.tasks.{task}: expected a table, got {values!r}")
        overrides[task] = from_table(CheckTolerances, {**dataclasses.asdict(tolerances), **values},
                                     f"{where}.tasks.{task}")
    for name, value in [*dataclasses.asdict(tolerances).items()] + [
            (f"tasks.{t}.{k}", v) for t, o in overrides.items() for k, v in dataclasses.asdict(o).items()]:
        if value < 0:
            raise UserError(f"{where}.{name}: must be at least 0, got {value!r}")
    return CheckSettings(tolerances, overrides, allow_missing)


def suite_tasks(value: Any, path: Path) -> dict[str, TaskSpec]:
    """The suite's tasks: a list of registry names / task-file paths, or a table of NAME = name,
    path or inline definition. Paths are relative to the suite file."""
    where = f"{path} tasks"
    if isinstance(value, list):
        entries = {}
        for i, reference in enumerate(value):
            if not isinstance(reference, str):
                raise UserError(f"{where}[{i}]: expected a task name or .toml path, got {reference!r}")
            spec = task_registry.find(reference, path.parent)
            entries[spec.name] = spec
        if len(entries) != len(value):
            raise UserError(f"{where}: a task is named twice in {value!r}")
    elif isinstance(value, dict):
        entries = {}
        for name, entry in value.items():
            check_task_name(name, f"{where}.{name}")
            if isinstance(entry, str):
                spec = dataclasses.replace(task_registry.find(entry, path.parent), name=name)
            elif isinstance(entry, dict):
                spec = task_registry.parse(entry, name, f"{path} [tasks.{name}]", path.parent)
            else:
                raise UserError(f"{where}.{name}: expected a task definition table or a task name, got {entry!r}")
            entries[name] = spec
    else:
        raise UserError(f"{where}: expected a list of task names or [tasks.NAME] tables, got {value!r}")
    if not entries:
        raise UserError(f"{where}: no tasks")
    return entries
