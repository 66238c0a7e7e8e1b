"""The regression gate: a baseline file of a suite's results, and the check of new results against it.

`mtlbench baseline RESULTS -o FILE` keeps, per recipe, each task's primary-metric mean and std over
seeds (and the values), the paired cost ratio, the seeds, the config hashes and the environment.
`mtlbench check RESULTS --baseline FILE` compares the means over seeds: a primary metric fails when
it falls by more than max(metric_tolerance, std_factor x the baseline's std), a cost ratio when it
rises by more than cost_tolerance (relative); a recipe, task or seed of the baseline that the results
lack fails unless allow_missing. Tolerances come from the suite's [check] table, as recorded in the
results (`config.suite.check`).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from bench.records import RunRecord, read_json
from bench.settings import CheckTolerances
from tasks.errors import UserError
from tasks.metrics import lower_is_better

KIND = "mtlbench-baseline"
VERSION = 1
REQUIRED = ("kind", "version", "suite", "select", "config_hash", "recipes")
RECIPE_REQUIRED = ("seeds", "config_hash", "metrics")
METRIC_REQUIRED = ("metric", "mean", "std", "values")


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
    for entry in recipes.values():
        for values in entry["metrics"].values():
            values["mean"], values["std"] = _mean_std(values["values"])
        costs = entry["cost"]["values"]
        if any(c is None for c in costs):
            entry["cost"] = None  # records from before the paired measurement, or [cost] enabled = false
        else:
            entry["cost"]["mean"], entry["cost"]["std"] = _mean_std(costs)
    first = records[0]
    return {"suite": first.suite, "select": select, "config_hash": config_hash(_suite_config(first)),
            "recipes": recipes, "check": first.config.get("suite", {}).get("check")}


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
                "environment": {k: env.get(k) for k in ("python", "torch", "transformers", "device", "device_name",
                                                        "torch_threads", "platform", "git_commit")},
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

    @property
    def failed(self) -> bool:
        return self.verdict in ("FAIL", "missing")

    @property
    def delta(self) -> float | None:
        if self.baseline is None or self.now is None:
            return None
        return self.now - self.baseline


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
            label = f"{task} {values['metric']}"
            got = mine["metrics"].get(task)
            if got is None:
                comparisons.append(Comparison(name, label, values["mean"], None, None,
                                              "missing" if not allowed else "allowed", "task not in the results"))
                continue
            tolerance = _tolerances(check_settings, task)
            margin = max(tolerance["metric_tolerance"], tolerance["std_factor"] * (values["std"] or 0.0))
            lower_better = lower_is_better(values["metric"])
            limit = values["mean"] + margin if lower_better else values["mean"] - margin
            now_mean = got["mean"]
            if now_mean is None or not math.isfinite(now_mean):
                verdict = "FAIL" if values["mean"] is not None and math.isfinite(values["mean"]) else "pass"
            else:
                verdict = "FAIL" if (now_mean > limit if lower_better else now_mean < limit) else "pass"
            diverged = mine.get("diverged")
            comparisons.append(Comparison(name, label, values["mean"], now_mean, limit, verdict,
                                          f"seed {', '.join(map(str, diverged))} diverged" if diverged else ""))
        if base.get("cost") and mine.get("cost"):
            tolerance = _tolerances(check_settings, None)["cost_tolerance"]
            limit = base["cost"]["mean"] * (1 + tolerance)
            verdict = "FAIL" if mine["cost"]["mean"] > limit else "pass"
            comparisons.append(Comparison(name, "cost x", base["cost"]["mean"], mine["cost"]["mean"], limit, verdict))
        elif base.get("cost"):
            comparisons.append(Comparison(name, "cost x", base["cost"]["mean"], None, None,
                                          "missing" if not allowed else "allowed", "no paired cost in the results"))
    for name in now["recipes"]:
        if name not in baseline["recipes"]:
            comparisons.append(Comparison(name, "recipe", None, None, None, "new", "not in the baseline"))
    return CheckResult(now["suite"], comparisons, notes)


def _number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(result: CheckResult, baseline_path: Path) -> str:
    failed = result.failed
    head = (f"### mtlbench check: suite '{result.suite}' against {baseline_path}: "
            + (f"**FAILED** ({len(failed)} of {len(result.comparisons)})" if failed
               else f"passed ({len(result.comparisons)} values)"))
    lines = [head, "", "| recipe | value | baseline | now | delta | limit | verdict |",
             "|---|---|---:|---:|---:|---:|---|"]
    for c in result.comparisons:
        verdict = f"**{c.verdict}**" if c.failed else c.verdict
        if c.note:
            verdict += f" ({c.note})"
        delta = "–" if c.delta is None else f"{c.delta:+.4f}"
        lines.append(f"| {c.recipe} | {c.value} | {_number(c.baseline)} | {_number(c.now)} | {delta} | "
                     f"{_number(c.limit)} | {verdict} |")
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
