"""Comparison tables from run records: a row per recipe, over seeds.

Each value is the mean over seeds with its standard deviation and a 95 % t-interval, clipped to the
metric's range (the mean lies in it, so the clipped interval keeps its coverage), printed from
MIN_SEEDS seeds (with two, t(0.975, 1) = 12.7 makes it wider than any metric). A task cell is marked
▲ / ▼ when the recipe is significantly better / worse than the suite's baseline recipe on that task
(paired bootstrap over dev examples pooled over seeds, bench.examples, p < 0.05), from MIN_SEEDS
paired seeds: with fewer, the bootstrap sees the examples' noise but not the seeds', and a marker
flips between machines. `Δm %` is the mean relative
change against the single-task recipes, sign-adjusted (Maninis et al., 2019; Vandenhende et al.,
2021). `cost x` is the paired step-cost ratio against the baseline recipe (bench.cost): the median of
every round's ratio over the seeds with its 95 % interval, `?` where that is wider than the target,
and a note when the baseline paired with itself is off 1 (bench.tables.cost_self_check); `train ex/s`
is the whole run's throughput. Markdown and LaTeX for reading, CSV (every statistic) for machines.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from mtlbench.bench.files import write_text_atomic
from mtlbench.bench.records import RunRecord
from mtlbench.tasks.errors import UserError
from mtlbench.tasks.metrics import HIGHER_IS_BETTER, RANGES, lower_is_better
from scipy import stats

SHORT = {"accuracy": "acc", "f1_macro": "F1", "pearson": "r", "spearman": "rho", "f1": "F1", "precision": "prec",
         "recall": "rec", "perplexity": "ppl"}
SIGNIFICANCE_LEVEL = 0.05
MIN_SEEDS = 3  # intervals printed and ▲ / ▼ given from this many seeds
FAMILIES = ("baseline", "sampler", "combiner", "regulariser", "freezing", "single task")


def column_name(task: str, metric: str) -> str:
    return f"{task} {SHORT.get(metric, metric)}"


def record_tasks(record: RunRecord) -> list[str]:
    return record.tasks or list(record.primary_metrics)


def suite_tasks(record: RunRecord) -> list[str]:
    return record.config.get("suite", {}).get("tasks") or list(record.primary_metrics)


def family(record: RunRecord, baseline: RunRecord | None) -> str:
    """The axis on which a recipe differs from the suite's baseline recipe (`baseline`: its record),
    for colours and grouping; the first that differs in the order regulariser, freezing, combiner,
    sampler."""
    if len(record_tasks(record)) < len(suite_tasks(record)):
        return "single task"
    names, base = record.recipe, baseline.recipe if baseline is not None else {}
    for axis, label in (("regularizers", "regulariser"), ("freezing", "freezing"), ("combiner", "combiner"),
                        ("sampler", "sampler")):
        if names.get(axis) != base.get(axis):
            return label
    return "baseline"


def baseline_recipe(records: list[RunRecord]) -> str:
    """The suite's baseline recipe (its `baseline` key; the first recipe for older records)."""
    named = records[0].config.get("suite", {}).get("baseline")
    if named:
        return named
    return min(records, key=lambda r: r.recipe_index).recipe_name


def runs_frame(records: list[RunRecord], select: str = "last") -> pd.DataFrame:
    """One row per run: recipe, seed, each task metric, overall and cost."""
    rows = []
    for record in records:
        if not record.finished:  # counted, never averaged: a diverged run has no metrics
            rows.append({"suite": record.suite, "recipe": record.recipe_name,
                         "recipe_index": record.recipe_index, "seed": record.seed, "diverged": 1,
                         **{column_name(t, m): np.nan for t, m in record.primary_metrics.items()},
                         **dict.fromkeys(("overall", "cost x", "train ex/s", "step ms", "peak MB"), np.nan)})
            continue
        if select == "test" and record.test_at_best_dev is None:
            raise UserError(f"run {record.run_id}: no test scores (its suite did not set test = true)")
        metrics = {"last": record.metrics, "best": record.best, "test": record.test_at_best_dev}[select]
        row = {"suite": record.suite, "recipe": record.recipe_name, "recipe_index": record.recipe_index,
               "seed": record.seed, "diverged": 0}
        for task, values in metrics.items():
            for metric, value in values.items():
                if metric != "epoch":
                    row[column_name(task, metric)] = np.nan if value is None else value
        partial = len(record_tasks(record)) < len(suite_tasks(record))
        if partial:
            row["overall"] = np.nan  # a mean over some of the tasks is not comparable with the others'
        elif select == "test":
            primary = record.primary_metrics
            scores = [metrics[t].get(primary[t]) for t in primary]
            row["overall"] = np.nan if None in scores else sum(scores) / len(scores)
        else:
            row["overall"] = record.overall if select == "last" else record.overall_best
        row["overall"] = np.nan if row["overall"] is None else row["overall"]
        cost = record.cost or {}
        row["cost x"] = cost.get("ratio", np.nan)
        row["train ex/s"] = record.train["examples_per_second"]
        row["step ms"] = record.train["step_seconds_median"] * 1000
        row["peak MB"] = record.peak_memory_mb
        rows.append(row)
    return pd.DataFrame(rows)


def _interval(std: pd.DataFrame, n: pd.Series) -> pd.DataFrame:
    """Half-width of the 95 % t-interval of the mean over n seeds (NaN for one seed)."""
    factor = n.map(lambda k: stats.t.ppf(0.975, k - 1) / math.sqrt(k) if k > 1 else np.nan)
    return std.mul(factor, axis=0)


def column_ranges(records: list[RunRecord]) -> dict[str, tuple[float, float]]:
    """Each metric column's range; overall, the mean of its tasks' primary metrics, the mean of theirs."""
    ranges = {}
    for record in records:
        for task, values in (record.metrics or {}).items():
            ranges.update({column_name(task, m): RANGES[m] for m in values if m in RANGES})
    primary = [RANGES.get(m) for m in records[0].primary_metrics.values()] if records else []
    if primary and None not in primary:
        ranges["overall"] = (float(np.mean([lo for lo, _ in primary])), float(np.mean([hi for _, hi in primary])))
    return ranges


def _clipped(bound: pd.DataFrame, ranges: dict, side: int) -> pd.DataFrame:
    """`bound` (a side of the intervals) held within each column's range (side -1: low, 1: high)."""
    clipped = bound.copy()
    for column, (low, high) in ranges.items():
        if column in clipped.columns:
            clipped[column] = clipped[column].clip(lower=low) if side < 0 else clipped[column].clip(upper=high)
    return clipped


def primary_columns(records: list[RunRecord]) -> list[str]:
    """Each task's primary-metric column, in the suite's task order."""
    seen = {}
    for record in sorted(records, key=lambda r: len(record_tasks(r)), reverse=True):
        for task, metric in record.primary_metrics.items():
            seen.setdefault(task, column_name(task, metric))
    order = suite_tasks(records[0])
    return [seen[t] for t in sorted(seen, key=lambda t: order.index(t) if t in order else len(order))]


def summary(records: list[RunRecord], select: str = "last", significance: bool = True) -> pd.DataFrame:
    """Per recipe (suite order): mean, std and 95 % interval over seeds of every column; family,
    Δm % and significance against the baseline recipe (the columns 'info' and 'p'). The points of
    the scalarisation front and pruned tuning trials are left out (bench.verdict shows the front)."""
    records = [r for r in records if r.front is None and r.status != "pruned"] or records
    runs = runs_frame(records, select)
    keys = ["suite", "recipe"]
    order = runs.groupby(keys, sort=False)["recipe_index"].min().sort_values(kind="stable")
    values = [c for c in runs.columns if c not in keys + ["recipe_index", "seed", "diverged"]]
    grouped = runs.groupby(keys, sort=False)[values]
    mean = grouped.mean().loc[order.index]
    std = grouped.std(ddof=1).loc[order.index]  # NaN with one seed: shown as no spread, not as 0
    finished = runs[runs["diverged"] == 0]
    seeds = finished.groupby(keys, sort=False)["seed"].nunique().reindex(order.index, fill_value=0)
    half = _interval(std, seeds)
    ranges = column_ranges([r for r in records if r.finished])
    table = pd.concat({"mean": mean, "std": std, "ci_low": _clipped(mean - half, ranges, -1),
                       "ci_high": _clipped(mean + half, ranges, 1)}, axis=1)
    table[("n", "seeds")] = seeds
    table[("n", "diverged")] = runs.groupby(keys, sort=False)["diverged"].sum().loc[order.index]
    by_recipe, every_run = {}, {}
    for record in records:
        every_run.setdefault((record.suite, record.recipe_name), []).append(record)
        if record.finished:
            by_recipe.setdefault((record.suite, record.recipe_name), []).append(record)
    baselines = {suite: baseline_recipe([r for r in records if r.suite == suite]) for suite, _ in every_run}
    base_of = {key: every_run.get((key[0], baselines[key[0]]), [None])[0] for key in every_run}
    table[("info", "family")] = [family(every_run[key][0], base_of[key]) for key in table.index]
    table[("info", "Δm %")] = _delta_m(table, records)
    primary = primary_columns(records)
    p_values = (paired_significance(by_recipe, baselines, table.index, select) if significance and select != "test"
                else {})
    for column in primary:
        table[("p", column)] = [p_values.get((key, column), np.nan) for key in table.index]
    table[("info", "baseline")] = [key[1] == baselines[key[0]] for key in table.index]
    _paired_cost_columns(table, by_recipe)
    return table


def pooled_cost(records: list[RunRecord]) -> dict | None:
    """A recipe's paired cost over its seeds: the median of every round's ratio with its 95 %
    interval (bench.paired_rounds), whether that pooled interval meets the runs' target, and for the
    baseline recipe (ratio 1 by construction) the self-pair's measured median and interval."""
    from mtlbench.bench.paired_rounds import is_precise, pooled

    costs = [r.cost for r in records if r.cost and r.cost.get("ratio") is not None]
    if not costs or len(costs) < len(records):
        return None
    if not all(c.get("ratios") for c in costs):  # records from before the rounds were kept: their mean
        return {"ratio": float(np.mean([c["ratio"] for c in costs])), "low": np.nan, "high": np.nan, "precise": True}
    ratios, middle, interval = pooled(costs)
    target = max(c.get("target", 0.03) for c in costs)  # the pooled interval is held to the runs' target
    found = {"ratio": middle, "low": interval[0] if interval else np.nan, "high": interval[1] if interval else np.nan,
             "precise": is_precise(ratios, target)}
    if any("self_ratio" in c for c in costs):  # the baseline against itself
        found.update({"self": middle, "self_low": found["low"], "self_high": found["high"],
                      "ratio": 1.0, "low": 1.0, "high": 1.0})
    return found


def _paired_cost_columns(table: pd.DataFrame, by_recipe: dict) -> None:
    """`cost x` as the pooled median with its interval (not a mean of medians), and the self-check."""
    pooled = {key: pooled_cost(by_recipe.get(key, [])) for key in table.index}
    for side, name in (("mean", "ratio"), ("ci_low", "low"), ("ci_high", "high")):
        table[(side, "cost x")] = [p[name] if p else np.nan for p in pooled.values()]
    table[("info", "cost precise")] = [bool(p and p["precise"]) for p in pooled.values()]
    for name in ("self", "self_low", "self_high"):
        table[("info", f"cost {name}")] = [p.get(name, np.nan) if p else np.nan for p in pooled.values()]


def cost_self_check(table: pd.DataFrame, target: float = 0.03) -> str | None:
    """A note when the baseline paired with itself is off 1 by more than its interval's half-width
    and the target: then the measurement itself is off, and the `cost x` column unreliable."""
    for key in table.index:
        measured = table.loc[key, ("info", "cost self")] if ("info", "cost self") in table.columns else np.nan
        if pd.isna(measured):
            continue
        low, high = table.loc[key, ("info", "cost self_low")], table.loc[key, ("info", "cost self_high")]
        slack = max(target, high - measured if not pd.isna(high) else 0, measured - low if not pd.isna(low) else 0)
        if abs(measured - 1) > slack:
            return (f"cost x unreliable: the baseline recipe paired with itself measured {measured:.3f} "
                    f"[{low:.3f}, {high:.3f}], not 1 (±{slack:.3f}); rerun on a quieter machine or with more rounds")
    return None


def _delta_m(table: pd.DataFrame, records: list[RunRecord]) -> list[float]:
    # single-task recipes: those that train one task of several
    """Δm % = 100/T Σ_t s_t (M_t - B_t) / |B_t|, B_t the single-task recipe's mean on task t, s_t = -1
    where lower is better; for recipes that train every task, when every task has a single-task row."""
    out = []
    for suite, recipe in table.index:
        suite_records = [r for r in records if r.suite == suite]
        single = {}
        for r in suite_records:
            if len(record_tasks(r)) == 1 < len(suite_tasks(r)) and r.finished:
                single.setdefault(record_tasks(r)[0], r.recipe_name)
        mine = next(r for r in suite_records if r.recipe_name == recipe)
        if not mine.finished:
            out.append(np.nan)
            continue
        tasks = record_tasks(mine)
        if len(tasks) < len(suite_tasks(mine)) or any(t not in single for t in tasks):
            out.append(np.nan)
            continue
        changes = []
        for task in tasks:
            metric = mine.primary_metrics[task]
            column = column_name(task, metric)
            now, base = table.loc[(suite, recipe), ("mean", column)], table.loc[(suite, single[task]), ("mean", column)]
            sign = -1.0 if lower_is_better(metric) else 1.0
            changes.append(sign * (now - base) / abs(base) if base else np.nan)
        out.append(100.0 * float(np.mean(changes)))
    return out


def paired_significance(by_recipe: dict, baselines: dict, index, select: str) -> dict:
    """{((suite, recipe), column): p-value} of the paired bootstrap against the baseline recipe,
    over the seeds both have, where every run kept its per-example dev predictions."""
    from types import SimpleNamespace

    from mtlbench.bench import examples
    from mtlbench.tasks.spec import TaskKind

    p_values = {}
    for suite, recipe in index:
        runs = by_recipe.get((suite, recipe))
        if not runs:
            continue
        base_name = baselines[suite]
        base_runs = {r.seed: r for r in by_recipe.get((suite, base_name), [])}
        if recipe == base_name or not base_runs:
            continue
        pairs = [(r, base_runs[r.seed]) for r in runs if r.seed in base_runs]
        files = [(a.examples_path, b.examples_path) for a, b in pairs]
        if len(pairs) < MIN_SEEDS or any(a is None or b is None for a, b in files):
            continue
        try:
            loaded = [(examples.load(a, select), examples.load(b, select)) for a, b in files]
        except Exception as error:  # noqa: BLE001 - a truncated or empty file: no significance, still a table
            warnings.warn(f"{recipe}: a per-example file cannot be read ({str(error)[:120]}); no significance "
                          "marker for it", stacklevel=2)
            continue
        for task, metric in runs[0].primary_metrics.items():
            if task not in base_runs[pairs[0][1].seed].primary_metrics:
                continue
            if not all(task in a and task in b for a, b in loaded):
                continue
            definition = runs[0].config.get("tasks", {}).get(task)
            if definition is None:
                continue
            spec = SimpleNamespace(name=task, kind=TaskKind(definition["kind"]), labels=definition["labels"])
            try:
                result = examples.paired_bootstrap(spec, metric, [(a[task], b[task]) for a, b in loaded])
            except ValueError:
                continue  # different dev rows (another data source): not paired
            p_values[((suite, recipe), column_name(task, metric))] = result["p_value"]
    return p_values


def marker(table: pd.DataFrame, key, column: str) -> str:
    if ("p", column) not in table.columns:
        return ""
    p = table.loc[key, ("p", column)]
    if pd.isna(p) or p >= SIGNIFICANCE_LEVEL:
        return ""
    base = [k for k in table.index if k[0] == key[0] and table.loc[k, ("info", "baseline")]]
    if not base:
        return ""
    better = table.loc[key, ("mean", column)] > table.loc[base[0], ("mean", column)]
    if any(column.endswith(" " + SHORT.get(m, m)) for m in HIGHER_IS_BETTER if lower_is_better(m)):
        better = not better
    return " ▲" if better else " ▼"


def _digits(column: str) -> int:
    if column == "cost x":
        return 2
    if column == "overall" or column.split(" ")[-1] in SHORT.values():
        return 3
    return 1


def _cost_cell(table, key) -> str:
    """The paired ratio with its 95 % interval; `?` where the rounds' cap came before the target."""
    m = table.loc[key, ("mean", "cost x")]
    if pd.isna(m):
        return "–"
    low, high = table.loc[key, ("ci_low", "cost x")], table.loc[key, ("ci_high", "cost x")]
    if table.loc[key, ("info", "baseline")]:
        return "1.00"
    cell = f"{m:.2f}" + ("" if pd.isna(low) else f" [{low:.2f}, {high:.2f}]")
    return cell + ("" if table.loc[key, ("info", "cost precise")] else " ?")


def _cell(table, key, column: str, interval: bool) -> str:
    if column == "cost x":
        return _cost_cell(table, key)
    m = table.loc[key, ("mean", column)]
    if pd.isna(m):
        return "–"
    d = _digits(column)
    cell = f"{m:.{d}f}"
    s = table.loc[key, ("std", column)]
    if not pd.isna(s):
        cell += f" ± {s:.{d}f}"
        if interval and table.loc[key, ("n", "seeds")] >= MIN_SEEDS:
            cell += f" [{table.loc[key, ('ci_low', column)]:.{d}f}, {table.loc[key, ('ci_high', column)]:.{d}f}]"
    return cell


def formatted(table: pd.DataFrame, all_metrics: bool = False, intervals: bool = True) -> pd.DataFrame:
    """The readable table: each task's primary metric (every metric with `all_metrics`), overall,
    Δm %, paired cost, throughput, memory, seeds. A suite column when the records span suites."""
    metric_columns = [c for c in table["mean"].columns if c not in ("overall", "cost x", "train ex/s", "step ms",
                                                                    "peak MB")]
    primary = [c for (group, c) in table.columns if group == "p"]
    shown = metric_columns if all_metrics else primary
    several_suites = table.index.get_level_values("suite").nunique() > 1
    out = pd.DataFrame(index=[f"{s}/{r}" if several_suites else r for s, r in table.index])
    out.index.name = "recipe"
    all_diverged = [table.loc[k, ("n", "seeds")] == 0 and table.loc[k, ("n", "diverged")] > 0 for k in table.index]
    for column in shown + ["overall"]:
        out[column] = ["diverged" if gone else
                       _cell(table, key, column, intervals) + (marker(table, key, column) if column in primary else "")
                       for key, gone in zip(table.index, all_diverged)]
    delta = table[("info", "Δm %")]
    if delta.notna().any():
        out["Δm %"] = ["–" if pd.isna(v) else f"{v:+.1f}" for v in delta]
    out["cost x"] = [_cell(table, key, "cost x", False) for key in table.index]
    out["train ex/s"] = [_cell(table, key, "train ex/s", False) for key in table.index]
    out["peak MB"] = [_cell(table, key, "peak MB", False) for key in table.index]
    out["seeds"] = [f"{n}" + (f" (+{d} diverged)" if d else "")
                    for n, d in zip(table[("n", "seeds")], table[("n", "diverged")])]
    out.index = [f"{name} (baseline)" if is_base else name
                 for name, is_base in zip(out.index, table[("info", "baseline")])]
    out.index.name = "recipe"
    return out


def markdown(table: pd.DataFrame, all_metrics: bool = False) -> str:
    text = formatted(table, all_metrics).to_markdown(disable_numparse=True)  # "0.250" stays as written
    notes = [note for note in (few_seeds_note(table), cost_note(table)) if note]
    return text + "".join(f"\n\n{note}" for note in notes)


def cost_note(table: pd.DataFrame) -> str:
    """What the cost column's marks mean, when it has them, and its self-check."""
    notes = []
    imprecise = [k for k in table.index if not pd.isna(table.loc[k, ("mean", "cost x")])
                 and not table.loc[k, ("info", "baseline")] and not table.loc[k, ("info", "cost precise")]]
    if imprecise:
        notes.append("cost x ?: its interval is wider than the target (the rounds met their cap first: a busy machine)")
    unreliable = cost_self_check(table)
    return "; ".join(notes + ([unreliable] if unreliable else []))


def few_seeds_note(table: pd.DataFrame) -> str:
    """What the table leaves out for want of seeds, and how to get it."""
    fewest = int(table[("n", "seeds")].min()) if len(table) else MIN_SEEDS
    if fewest >= MIN_SEEDS:
        return ""
    seeds = f"{fewest} seed{'s' if fewest != 1 else ''}"
    return (f"{seeds}: no 95 % intervals and no ▲ / ▼ where a recipe has fewer than {MIN_SEEDS} seeds (with fewer "
            f"they would say more than the runs can; --seeds {MIN_SEEDS} or more)")


# LaTeX for the characters the readable table uses (the rest is escaped); amssymb has the triangles.
_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_TEX_SYMBOLS = {"±": r"$\pm$", "▲": r"$\blacktriangle$", "▼": r"$\blacktriangledown$", "Δ": r"$\Delta$",
                "–": "--", "×": r"$\times$"}


def tex_cell(text: str) -> str:
    """A table cell as ASCII LaTeX: special characters escaped, the table's symbols as math."""
    escaped = "".join(_TEX_SPECIAL.get(c, c) for c in str(text))
    return "".join(_TEX_SYMBOLS.get(c, c) for c in escaped)


def latex(table: pd.DataFrame, all_metrics: bool = False) -> str:
    """A booktabs tabular in ASCII (pdflatex; \\usepackage{booktabs, amssymb}), one header row."""
    shown = formatted(table, all_metrics)
    header = ["recipe", *shown.columns]
    lines = [r"\begin{tabular}{l" + "r" * len(shown.columns) + "}", r"\toprule",
             " & ".join(tex_cell(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(tex_cell(c) for c in (name, *values)) + r" \\" for name, values in
              zip(shown.index, shown.itertuples(index=False))]
    lines += [r"\bottomrule", r"\end{tabular}"]
    notes = [note for note in (few_seeds_note(table), cost_note(table)) if note]
    return "\n".join(lines) + "\n" + "".join(f"% {tex_cell(note)}\n" for note in notes)


def csv(table: pd.DataFrame) -> str:
    flat = pd.DataFrame(index=table.index)
    for stat, column in table.columns:
        if stat == "n":
            flat[column] = table[(stat, column)]  # seeds (finished runs), diverged
        elif stat == "info":
            flat[column] = table[(stat, column)]
        elif stat == "p":
            flat[f"{column} p"] = table[(stat, column)]
        else:
            flat[column if stat == "mean" else f"{column} {stat}"] = table[(stat, column)]
    return flat.reset_index().to_csv(index=False, float_format="%.6g")


def write_tables(records: list[RunRecord], out_dir: Path, select: str = "last", appendix: str = ""
                 ) -> dict[str, Path]:
    """table.md (then `appendix`: the verdict, bench.verdict.section), table.csv and table.tex."""
    table = summary(records, select)
    written = {}
    for name, text in (("table.md", markdown(table) + "\n" + (f"\n{appendix}" if appendix else "")), ("table.csv", csv(table)), ("table.tex", latex(table))):
        write_text_atomic(out_dir / name, text)
        written[name] = out_dir / name
    return written
