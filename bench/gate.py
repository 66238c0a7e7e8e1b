"""The regression gate: a baseline file of a suite's results, and the check of new results against it.

`mtlbench baseline RESULTS -o FILE` keeps, per recipe, each task's primary-metric mean and std over
seeds (and the values), the paired cost ratio, the seeds, the config hashes and the environment.
`mtlbench check RESULTS --baseline FILE` compares the means over seeds: a primary metric fails when
it falls by more than its margin, a cost ratio when the low end of its 95 % interval rises above
the baseline's high end by more than cost_tolerance (relative);
a recipe, task or seed of the baseline that the results lack fails unless allow_missing.

The margin is the smallest drop the check can tell from noise: max(metric_tolerance, std_factor x
the standard error of the change). Over the seeds both sides hold the change is paired seed by seed
(the same computation rerun differs by float rounding alone, so the margin is the tolerance);
otherwise it is the difference of two means, sqrt(s_b^2/n_b + s_n^2/n_n). A margin above
must_detect fails closed: the gate says it cannot see a drop that size, and how many seeds would
let it. Tolerances come from the suite's [check] table, as recorded in the results
(`config.suite.check`).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from mtlbench.bench.records import RunRecord, read_json
from mtlbench.bench.settings import CheckTolerances
from mtlbench.tasks.errors import UserError
from mtlbench.tasks.metrics import lower_is_better

KIND = "mtlbench-baseline"
VERSION = 1
REQUIRED = ("kind", "version", "suite", "select", "config_hash", "recipes")
RECIPE_REQUIRED = ("seeds", "config_hash", "metrics")
METRIC_REQUIRED = ("metric", "mean", "std", "values")
ENVIRONMENT = ("python", "torch", "transformers", "datasets", "device", "device_name", "cpu_model", "torch_threads",
               "platform", "git_commit")
LIBRARIES = ("python", "torch", "transformers", "datasets", "cpu_model")  # a difference is noted under the check


def config_hash(value) -> str:
    """A short hash of a resolved configuration (key order does not matter)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _suite_config(record: RunRecord) -> dict:
    """The suite settings that decide results: without the seeds, the recipe list, the gate's own
    tolerances and where the file lay."""
    suite = dict(record.config.get("suite", {}))
    for key in ("seeds", "source", "check", "data_dir", "checkpoints", "tracking"):  # tracking: where scalars go
        suite.pop(key, None)
    return suite


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(finite) < len(values) or not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def _select(record: RunRecord, select: str) -> dict:
    return {"last": record.metrics, "best": record.best}[select]


def summarise(records: list[RunRecord], select: str = "last") -> dict:
    """Per recipe: seeds, config hash, primary metric values with mean and std, paired cost ratio."""
    suites = sorted({r.suite for r in records})
    if len(suites) > 1:
        raise UserError(f"the results hold records of several suites ({', '.join(suites)}); "
                        "a baseline and a check cover one suite")
    recipes: dict[str, dict] = {}
    for record in sorted(records, key=lambda r: (r.recipe_index, r.seed)):
        entry = recipes.setdefault(record.recipe_name, {
            "seeds": [], "config_hash": config_hash(record.config.get("recipe")), "metrics": {},
            "cost": {"values": []}})
        entry["seeds"].append(record.seed)
        if not record.finished:
            entry.setdefault("diverged", []).append(record.seed)
        metrics = _select(record, select) if record.finished else {}  # None: fails the check
        for task, metric in record.primary_metrics.items():
            entry["metrics"].setdefault(task, {"metric": metric, "values": []})["values"].append(
                metrics.get(task, {}).get(metric))
        entry["cost"]["values"].append((record.cost or {}).get("ratio"))
        entry.setdefault("_rounds", []).append(record.cost or {})
    for entry in recipes.values():
        for values in entry["metrics"].values():
            values["mean"], values["std"] = _mean_std(values["values"])
        costs, measured = entry["cost"]["values"], entry.pop("_rounds")
        if any(c is None for c in costs):
            entry["cost"] = None  # records from before the paired measurement, or [cost] enabled = false
        else:
            entry["cost"]["mean"], entry["cost"]["std"] = _mean_std(costs)
            entry["cost"].update(_pooled_interval(measured))
    first = records[0]
    return {"suite": first.suite, "select": select, "config_hash": config_hash(_suite_config(first)),
            "recipes": recipes, "check": first.config.get("suite", {}).get("check")}


def _pooled_interval(costs: list[dict]) -> dict:
    """The 95 % interval of the median ratio over every round of every seed (bench.paired_rounds);
    and the median itself (the table's `cost x`); [1, 1] for the baseline recipe (1 by construction);
    none from fewer than 6 rounds."""
    from mtlbench.bench.paired_rounds import pooled

    if any("self_ratio" in c for c in costs):
        return {"median": 1.0, "interval": [1.0, 1.0]}
    _, middle, interval = pooled(costs)
    return {"median": middle, "interval": list(interval)} if interval else {}


def make_baseline(records: list[RunRecord], select: str = "last") -> dict:
    """The baseline of finished runs: a diverged run has no numbers to hold a later run to, so it is
    left out with a note; a baseline whose values are not all finite numbers is refused."""
    finished = [r for r in records if r.finished]
    notes = [f"recipe '{r.recipe_name}' seed {r.seed} diverged: left out of the baseline"
             for r in records if not r.finished]
    left_out = {r.recipe_name for r in records} - {r.recipe_name for r in finished}
    if left_out:
        raise UserError(f"every run of recipe {', '.join(repr(n) for n in sorted(left_out))} diverged: a baseline "
                        "needs finished runs")
    summary = summarise(finished, select)
    summary.pop("check")
    env = finished[0].env or {}
    baseline = {"kind": KIND, "version": VERSION, **summary,
                "environment": {k: env.get(k) for k in ENVIRONMENT},
                "records": len(finished), "notes": notes}
    _check_numbers(baseline, "the baseline")
    return baseline


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_numbers(baseline: dict, where) -> None:
    """Every mean, std and value a check compares with is a finite number (a NaN would pass any
    comparison, a null would break it): a gate that cannot fail is refused."""
    for name, entry in baseline["recipes"].items():
        places = [(f"metrics.{task}", values) for task, values in entry["metrics"].items()]
        places += [("cost", entry["cost"])] if entry.get("cost") is not None else []
        for place, values in places:
            if not isinstance(values, dict):
                raise UserError(f"{where}: recipes.{name}.{place}: expected an object")
            for key in ("mean", "std"):
                if not _finite(values.get(key)):
                    raise UserError(f"{where}: recipes.{name}.{place}.{key}: {values.get(key)!r} is not a finite "
                                    "number (an undefined metric or a diverged run); a baseline must hold numbers")
            listed = values.get("values", [])
            if not isinstance(listed, list) or not all(_finite(v) for v in listed):
                raise UserError(f"{where}: recipes.{name}.{place}.values: expected finite numbers, got {listed!r}")


def load_baseline(path: Path) -> dict:
    """The baseline file, or a one-line error naming what is wrong with it."""
    path = Path(path)
    baseline = read_json(path)  # not found, a folder, not UTF-8, not JSON: one line each
    if not isinstance(baseline, dict):
        raise UserError(f"{path}: expected a JSON object written by `mtlbench baseline`")
    for key in REQUIRED:
        if key not in baseline:
            raise UserError(f"{path}: missing key '{key}' (not a file written by `mtlbench baseline`?)")
    if baseline["kind"] != KIND or baseline["version"] != VERSION:
        raise UserError(f"{path}: kind {baseline['kind']!r} version {baseline['version']!r}; "
                        f"expected {KIND!r} version {VERSION}")
    if not isinstance(baseline["recipes"], dict) or not baseline["recipes"]:
        raise UserError(f"{path}: 'recipes' must be a non-empty object")
    for name, entry in baseline["recipes"].items():
        if not isinstance(entry, dict):
            raise UserError(f"{path}: recipes.{name}: expected an object")
        for key in RECIPE_REQUIRED:
            if key not in entry:
                raise UserError(f"{path}: recipes.{name}: missing key '{key}'")
        if not isinstance(entry["metrics"], dict):
            raise UserError(f"{path}: recipes.{name}.metrics: expected an object")
        for task, values in entry["metrics"].items():
            for key in METRIC_REQUIRED:
                if not isinstance(values, dict) or key not in values:
                    raise UserError(f"{path}: recipes.{name}.metrics.{task}: missing key '{key}'")
    _check_numbers(baseline, path)
    return baseline


@dataclass
class Comparison:
    recipe: str
    value: str  # "TASK METRIC", "cost x", or what is missing
    baseline: float | None
    now: float | None
    limit: float | None  # the lowest (metrics) or highest (cost) value that passes
    verdict: str  # "pass", "FAIL", "missing", "new"
    note: str = ""
    margin: float | None = None  # metrics: the smallest drop this comparison fails


    @property
    def failed(self) -> bool:
        return self.verdict in ("FAIL", "missing")

    @property
    def delta(self) -> float | None:
        if self.baseline is None or self.now is None:
            return None
        return self.now - self.baseline


@dataclass
class Margin:
    """How far a metric's mean may move before the check fails, and on which seeds it was compared."""

    baseline: float  # the baseline's mean over the compared seeds
    now: float
    margin: float
    note: str = ""


def _margin(base: dict, base_seeds: list[int], got: dict, now_seeds: list[int], tolerance: dict) -> Margin:
    """The compared means and the margin: paired over the seeds both hold, else unpaired."""
    k, floor = tolerance["std_factor"], tolerance["metric_tolerance"]
    now_by_seed = dict(zip(now_seeds, got["values"], strict=True))
    pairs = [(b, now_by_seed[s]) for s, b in zip(base_seeds, base["values"], strict=True) if s in now_by_seed]
    if pairs and not all(n is not None and math.isfinite(n) for _, n in pairs):  # a diverged run: fails
        return Margin(statistics.fmean(b for b, _ in pairs), math.nan, floor)
    if pairs:
        changes = [n - b for b, n in pairs]
        spread = statistics.stdev(changes) / math.sqrt(len(changes)) if len(changes) > 1 else 0.0
        note = "" if len(pairs) > 1 else "1 seed: the check cannot measure its own noise"
        return Margin(statistics.fmean(b for b, _ in pairs), statistics.fmean(n for _, n in pairs),
                      max(floor, k * spread), note)
    if len(base["values"]) < 2 or len(got["values"]) < 2 or not math.isfinite(got["mean"] or math.nan):
        return Margin(base["mean"], got["mean"], math.inf, "no shared seeds and too few to measure the spread")
    spread = math.sqrt(base["std"] ** 2 / len(base["values"]) + got["std"] ** 2 / len(got["values"]))
    return Margin(base["mean"], got["mean"], max(floor, k * spread), "unpaired: no seed in common")


def _blind_note(margin: Margin, tolerance: dict, seeds: int) -> str:
    """Why a margin above must_detect fails, and the seeds that would bring it under."""
    if not math.isfinite(margin.margin):
        return f"blind: {margin.note}; run the baseline's seeds"
    needed = math.ceil(seeds * ((margin.margin / tolerance["must_detect"]) ** 2))
    return (f"blind: the check cannot see a drop under {margin.margin:.4f} (must_detect "
            f"{tolerance['must_detect']:g}); about {needed} seeds on both sides would")

@dataclass
class CheckResult:
    suite: str
    comparisons: list[Comparison]
    notes: list[str]

    @property
    def failed(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.failed]


def _tolerances(check: dict | None, task: str | None) -> dict:
    defaults = {**CheckTolerances().__dict__, "allow_missing": False}
    check = check or {}
    merged = {**defaults, **{k: v for k, v in check.items() if k != "tasks"}}
    if task is not None:
        merged.update((check.get("tasks") or {}).get(task, {}))
    return merged


def check(records: list[RunRecord], baseline: dict, baseline_path: Path,
          allow_missing: bool | None = None) -> CheckResult:
    now = summarise(records, baseline["select"])
    if now["suite"] != baseline["suite"]:
        raise UserError(f"{baseline_path}: a baseline of suite '{baseline['suite']}', "
                        f"but the results are of suite '{now['suite']}'")
    check_settings = now["check"]
    allowed = _tolerances(check_settings, None)["allow_missing"] if allow_missing is None else allow_missing
    notes = []
    if now["config_hash"] != baseline["config_hash"]:
        notes.append("the suite's settings (training, data, model or tasks) differ from the baseline's")
    notes += _environment_notes(baseline.get("environment") or {}, records[0].env or {})
    comparisons = []
    for name, base in baseline["recipes"].items():
        mine = now["recipes"].get(name)
        if mine is None:
            comparisons.append(Comparison(name, "recipe", None, None, None, "missing" if not allowed else "allowed",
                                          "not in the results"))
            continue
        if mine["config_hash"] != base["config_hash"]:
            notes.append(f"recipe '{name}': its configuration differs from the baseline's")
        lacking = sorted(set(base["seeds"]) - set(mine["seeds"]))
        if lacking:
            comparisons.append(Comparison(name, "seeds", None, None, None, "missing" if not allowed else "allowed",
                                          f"seeds {', '.join(map(str, lacking))} not in the results"))
        for task, values in base["metrics"].items():
            comparisons.append(_compare_metric(name, task, values, base["seeds"], mine, check_settings, allowed))
        if base.get("cost") and mine.get("cost"):
            comparisons.append(_compare_cost(name, base["cost"], mine["cost"],
                                             _tolerances(check_settings, None)["cost_tolerance"]))
        elif base.get("cost"):
            comparisons.append(Comparison(name, "cost x", base["cost"]["mean"], None, None,
                                          "missing" if not allowed else "allowed", "no paired cost in the results"))
    for name in now["recipes"]:
        if name not in baseline["recipes"]:
            comparisons.append(Comparison(name, "recipe", None, None, None, "new", "not in the baseline"))
    return CheckResult(now["suite"], comparisons, notes)


def _compare_cost(recipe: str, base: dict, mine: dict, tolerance: float) -> Comparison:
    """A cost regression is a rise beyond the tolerance that the intervals cannot explain: the
    results' lower bound above the baseline's upper bound x (1 + tolerance). Without an interval
    (an older baseline, fewer than 6 rounds) a side counts as its mean. Shown: the pooled medians,
    as the table prints them (the means of the seeds' medians where there are none)."""
    base_high = (base.get("interval") or [base["mean"]] * 2)[1]
    mine_low = (mine.get("interval") or [mine["mean"]] * 2)[0]
    limit = base_high * (1 + tolerance)
    verdict = "FAIL" if mine_low > limit else "pass"
    shown = mine.get("interval")
    note = f"interval [{shown[0]:.3f}, {shown[1]:.3f}]; its low end is held to the limit" if shown else ""
    return Comparison(recipe, "cost x", base.get("median", base["mean"]), mine.get("median", mine["mean"]), limit,
                      verdict, note)


def _compare_metric(recipe: str, task: str, values: dict, base_seeds: list[int], mine: dict, check_settings,
                    allowed: bool) -> Comparison:
    """One task's primary metric of one recipe against the baseline (see the module's docstring)."""
    label = f"{task} {values['metric']}"
    got = mine["metrics"].get(task)
    if got is None:
        return Comparison(recipe, label, values["mean"], None, None, "missing" if not allowed else "allowed",
                          "task not in the results")
    tolerance = _tolerances(check_settings, task)
    margin = _margin(values, base_seeds, got, mine["seeds"], tolerance)
    lower_better = lower_is_better(values["metric"])
    limit = margin.baseline + margin.margin if lower_better else margin.baseline - margin.margin
    notes = [margin.note] if margin.note else []
    if margin.now is None or not math.isfinite(margin.now):
        verdict = "FAIL"
    elif margin.margin > tolerance["must_detect"]:
        verdict, notes = "FAIL", [_blind_note(margin, tolerance, len(base_seeds))]
    else:
        verdict = "FAIL" if (margin.now > limit if lower_better else margin.now < limit) else "pass"
    if mine.get("diverged"):
        notes.append(f"seed {', '.join(map(str, mine['diverged']))} diverged")
    return Comparison(recipe, label, margin.baseline, margin.now, limit if math.isfinite(limit) else None, verdict,
                      "; ".join(notes), margin.margin)


def _environment_notes(then: dict, now: dict) -> list[str]:
    """Libraries and CPU that differ from the baseline's: the first suspects of a change in the last
    digits (or more: a transformers release can change a model's initialisation)."""
    return [f"{key} {now[key]} here, {then[key]} in the baseline" for key in LIBRARIES
            if then.get(key) and now.get(key) and then[key] != now[key]]


def _number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(result: CheckResult, baseline_path: Path) -> str:
    failed = result.failed
    head = (f"### mtlbench check: suite '{result.suite}' against {baseline_path}: "
            + (f"**FAILED** ({len(failed)} of {len(result.comparisons)})" if failed
               else f"passed ({len(result.comparisons)} values)"))
    lines = [head, "", "| recipe | value | baseline | now | delta | limit | catches a drop of | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for c in result.comparisons:
        verdict = f"**{c.verdict}**" if c.failed else c.verdict
        if c.note:
            verdict += f" ({c.note})"
        delta = "–" if c.delta is None else f"{c.delta:+.4f}"
        catches = "–" if c.margin is None else "never" if math.isinf(c.margin) else f"> {c.margin:.4f}"
        lines.append(f"| {c.recipe} | {c.value} | {_number(c.baseline)} | {_number(c.now)} | {delta} | "
                     f"{_number(c.limit)} | {catches} | {verdict} |")
    lines += [""] + [f"- note: {n}" for n in result.notes]
    return "\n".join(lines).rstrip() + "\n"


def junit_xml(result: CheckResult) -> str:
    suite = ElementTree.Element("testsuite", name=f"mtlbench check {result.suite}",
                                tests=str(len(result.comparisons)), failures=str(len(result.failed)))
    for c in result.comparisons:
        case = ElementTree.SubElement(suite, "testcase", classname=f"{result.suite}.{c.recipe}", name=c.value)
        if c.failed:
            failure = ElementTree.SubElement(case, "failure", message=f"{c.verdict}: {c.note or 'below the limit'}")
            failure.text = f"baseline {_number(c.baseline)}, now {_number(c.now)}, limit {_number(c.limit)}"
        elif c.verdict in ("new", "allowed"):
            ElementTree.SubElement(case, "skipped", message=c.note)
    ElementTree.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(suite, encoding="unicode") + "\n"
