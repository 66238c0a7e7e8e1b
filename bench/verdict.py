"""The verdict: for each recipe against the suite's baseline, does it help? (docs/fair-comparison.md)

Per task, Δ = the recipe's primary metric minus the baseline's (sign-adjusted: positive is better),
averaged over the seeds both ran, with its 95 % t-interval over those seeds; p from the paired
bootstrap over dev examples (bench.examples), Holm-corrected over every (recipe, task) test of the
table. A task's difference is *detected* when p < 0.05 after the correction and, with two seeds or
more, its interval over seeds excludes zero (significant over examples is not enough: the next seed
could undo it). A recipe is "better" when some task's detected difference is positive and none
negative; "worse" the other way round; "mixed" when both; otherwise "no detectable
difference". With the scalarisation front in the records (bench.front), a recipe is "inside the
front" when some static weighting is at least as good on every task (means over seeds), and its
hypervolume is given beside the front's, above a stated reference point. The line names the budget
(trials per recipe, or untuned) and the paired step cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from mtlbench.bench import front
from mtlbench.bench.records import RunRecord
from mtlbench.bench.tables import (
    SIGNIFICANCE_LEVEL,
    baseline_recipe,
    column_name,
    paired_significance,
    record_tasks,
    suite_tasks,
)
from mtlbench.tasks.metrics import lower_is_better
from scipy import stats


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm, 1979), in the input order; NaN stays NaN and is
    not counted among the tests."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m, adjusted, running = len(order), [math.nan] * len(p_values), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


@dataclass
class TaskDifference:
    difference: float  # mean over paired seeds, positive = better than the baseline
    low: float  # 95 % t-interval over seeds (NaN with one seed)
    high: float
    seeds: int
    p: float = math.nan  # paired bootstrap over dev examples
    p_holm: float = math.nan

    @property
    def detected(self) -> bool:
        """Significant over dev examples after Holm's correction and, with two seeds or more, an
        interval over seeds that excludes zero."""
        over_seeds = self.seeds < 2 or self.low > 0 or self.high < 0
        return self.p_holm < SIGNIFICANCE_LEVEL and over_seeds


@dataclass
class Verdict:
    recipe: str
    baseline: str
    tasks: dict[str, TaskDifference] = field(default_factory=dict)
    call: str = "no detectable difference"
    budget: str = "untuned"
    cost: float = math.nan
    inside_front: bool | None = None  # None: no front in the records
    hypervolume: float = math.nan
    front_hypervolume: float = math.nan


def _sign(metric: str) -> float:
    return -1.0 if lower_is_better(metric) else 1.0


def _scores(record: RunRecord, select: str) -> dict[str, float]:
    table = record.metrics if select == "last" else record.best
    return {t: table[t].get(m) for t, m in record.primary_metrics.items()}


def recipe_points(records: list[RunRecord], select: str) -> dict[str, dict[str, tuple[float, float]]]:
    """Per recipe, per task: (mean primary metric over its finished seeds, sign-adjusted so that
    higher is better; the 95 % t half-width over seeds, NaN for one seed)."""
    by_recipe: dict[str, list[RunRecord]] = {}
    for record in records:
        if record.finished:
            by_recipe.setdefault(record.recipe_name, []).append(record)
    points = {}
    for name, runs in by_recipe.items():
        scores = [_scores(r, select) for r in runs]
        points[name] = {}
        for task, metric in runs[0].primary_metrics.items():
            values = [_sign(metric) * (s[task] or 0.0) for s in scores]
            n = len(values)
            half = stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n) if n > 1 else math.nan
            points[name][task] = (float(np.mean(values)), float(half))
    return points


def _mean_points(records: list[RunRecord], select: str) -> dict[str, dict[str, float]]:
    return {name: {t: mean for t, (mean, _) in tasks.items()} for name, tasks in recipe_points(records, select).items()}


def _difference(mine: list[RunRecord], theirs: dict[int, RunRecord], task: str, select: str) -> TaskDifference:
    metric = mine[0].primary_metrics[task]
    pairs = [(_scores(r, select)[task], _scores(theirs[r.seed], select)[task]) for r in mine if r.seed in theirs]
    values = [_sign(metric) * ((a or 0.0) - (b or 0.0)) for a, b in pairs]
    n = len(values)
    mean = float(np.mean(values)) if n else math.nan
    half = float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return TaskDifference(mean, mean - half, mean + half, n)


def verdicts(records: list[RunRecord], select: str = "last") -> list[Verdict]:
    """Each recipe that trains every task, against the baseline, in suite order (see the module
    docstring). Records of several suites: the first suite's."""
    suite = records[0].suite
    records = [r for r in records if r.suite == suite and r.status != "pruned"]
    base_name = baseline_recipe(records)
    compared = [r for r in records if r.front is None and len(record_tasks(r)) == len(suite_tasks(r))]
    front_records = [r for r in records if r.front is not None]
    base_runs = {r.seed: r for r in compared if r.recipe_name == base_name and r.finished}
    names = sorted({r.recipe_name for r in compared if r.recipe_name != base_name},
                   key=lambda n: min(r.recipe_index for r in compared if r.recipe_name == n))
    by_recipe = {}
    for record in compared:
        if record.finished:
            by_recipe.setdefault((suite, record.recipe_name), []).append(record)
    p_values = paired_significance(by_recipe, {suite: base_name}, [(suite, n) for n in names], select)
    found = []
    for name in names:
        mine = by_recipe.get((suite, name), [])
        verdict = Verdict(name, base_name)
        runs = [r for r in compared if r.recipe_name == name]
        tuned = next((r.tuned for r in runs if r.tuned), None)
        verdict.budget = f"{tuned['trials']} trial{'s' * (tuned['trials'] != 1)}" if tuned else "untuned"
        costs = [r.cost["ratio"] for r in mine if r.cost]
        verdict.cost = float(np.median(costs)) if costs else math.nan
        for task, metric in (mine[0].primary_metrics.items() if mine else ()):
            difference = _difference(mine, base_runs, task, select)
            difference.p = p_values.get(((suite, name), column_name(task, metric)), math.nan)
            verdict.tasks[task] = difference
        found.append(verdict)
    _correct(found)
    if front_records:
        _place_on_front(found, _mean_points(compared, select), _mean_points(front_records, select))
    return found


def _correct(found: list[Verdict]) -> None:
    """Holm over every test of the table, then each recipe's call."""
    tests = [d for v in found for d in v.tasks.values()]
    for difference, adjusted in zip(tests, holm([d.p for d in tests])):
        difference.p_holm = adjusted
    for verdict in found:
        significant = [d for d in verdict.tasks.values() if d.detected]
        better = any(d.difference > 0 for d in significant)
        worse = any(d.difference < 0 for d in significant)
        verdict.call = ("mixed" if better and worse else "better" if better else "worse" if worse
                        else "no detectable difference")


def reference_point(points: list[list[float]]) -> list[float]:
    """The hypervolume's reference: per task, the lowest score shown minus 5 % of the scores' range
    (so the worst point still covers some volume)."""
    columns = np.array(points, dtype=float)
    low, high = columns.min(axis=0), columns.max(axis=0)
    return list(low - 0.05 * np.maximum(high - low, 1e-9))


def _place_on_front(found: list[Verdict], recipes: dict[str, dict[str, float]],
                    front_points: dict[str, dict[str, float]]) -> None:
    tasks = list(next(iter(front_points.values())))
    grid = [[p[t] for t in tasks] for p in front_points.values()]
    shown = grid + [[p[t] for t in tasks] for p in recipes.values()]
    reference = reference_point(shown)
    front_volume = front.hypervolume(grid, reference)
    for verdict in found:
        if verdict.recipe not in recipes:
            continue
        mine = [recipes[verdict.recipe][t] for t in tasks]
        verdict.inside_front = any(front.at_least_as_good(p, mine) for p in grid)
        verdict.hypervolume = front.hypervolume([mine], reference)
        verdict.front_hypervolume = front_volume


def _number(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:+.3f}"


def _p(value: float) -> str:
    """A bootstrap p of 1000 replicates resolves no finer than 0.001."""
    return "–" if math.isnan(value) else "<0.001" if value < 0.001 else f"{value:.3f}"


def markdown(found: list[Verdict]) -> str:
    """The verdict table and one line per recipe."""
    if not found:
        return "## Verdict\n\nNo recipe to compare with the baseline.\n"
    tasks = list(dict.fromkeys(t for v in found for t in v.tasks))
    head = ["recipe"] + [f"{t} Δ [95 % CI] (p Holm)" for t in tasks] + ["inside front", "HV / front HV", "budget",
                                                                      "cost x", "verdict"]
    lines = [f"## Verdict against {found[0].baseline}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for v in found:
        cells = [v.recipe]
        for task in tasks:
            d = v.tasks.get(task)
            cells.append("–" if d is None else f"{_number(d.difference)} [{_number(d.low)}, {_number(d.high)}] "
                                               f"({_p(d.p_holm)}){' *' if d.detected else ''}")
        cells.append("–" if v.inside_front is None else "yes" if v.inside_front else "no")
        cells.append("–" if math.isnan(v.hypervolume) else f"{v.hypervolume:.4g} / {v.front_hypervolume:.4g}")
        cells += [v.budget, "–" if math.isnan(v.cost) else f"{v.cost:.2f}", v.call]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for v in found:
        front_note = ("" if v.inside_front is None else
                      "; inside the front: a static weighting is at least as good on every task" if v.inside_front
                      else "; no static weighting of the front is as good on every task")
        cost = "" if math.isnan(v.cost) else f", cost {v.cost:.2f}x"
        lines.append(f"- **{v.recipe}**: {v.call} vs {v.baseline} (at {v.budget}{cost}){front_note}.")
    lines += ["", ("Δ: mean over seeds of the paired difference (positive = better); interval: 95 % t over seeds; "
              "p: paired bootstrap over dev examples, Holm-corrected over the whole table. * detected: p below "
              f"{SIGNIFICANCE_LEVEL} and, with two seeds or more, an interval over seeds that excludes zero. "
              "What it cannot say: docs/fair-comparison.md.")]
    return "\n".join(lines) + "\n"


def section(records: list[RunRecord], select: str = "last") -> str:
    """table.md's verdict section: for the records of `mtlbench tune` or with the front; else empty."""
    return markdown(verdicts(records, select)) if any(r.tuned or r.front for r in records) else ""
