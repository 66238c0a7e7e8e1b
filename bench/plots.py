"""Plots from run records: a recipes x tasks heat map, per-task dot plots with intervals, quality
against paired cost by recipe family, per task pair the gradient conflicts of each recipe, and
the curves over training (bench.curve_plots). Every plot is written atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display
import matplotlib.pyplot as plt
import numpy as np
from adjustText import adjust_text
from mtlbench.bench import conflict_probe
from mtlbench.bench.figures import colors as _colors
from mtlbench.bench.figures import save as _save
from mtlbench.bench.records import RunRecord
from mtlbench.bench.tables import FAMILIES, MIN_SEEDS, SHORT, baseline_recipe, marker, primary_columns, summary
from mtlbench.tasks.errors import UserError
from mtlbench.tasks.metrics import HIGHER_IS_BETTER, lower_is_better

FAMILY_COLORS = dict(zip(FAMILIES, plt.get_cmap("tab10").colors))


def _order(table) -> list:
    """Recipes that train every task by overall (best first), then the single-task rows."""
    overall = table[("mean", "overall")]
    ranked = sorted(range(len(table)), key=lambda i: (np.isnan(overall.iloc[i]), -np.nan_to_num(overall.iloc[i])))
    return [table.index[i] for i in ranked]


def _label(table, key) -> str:
    name = key[1] if table.index.get_level_values("suite").nunique() == 1 else f"{key[0]}/{key[1]}"
    return name + (" (baseline)" if table.loc[key, ("info", "baseline")] else "")


def write_plots(records: list[RunRecord], out_dir: Path, select: str = "last") -> list[Path]:
    """The plots of the finished runs (diverged runs have no metrics to plot; the table lists them)."""
    records = [r for r in records if r.finished]
    if not records:
        raise UserError(f"{out_dir}: no finished runs to plot (every run diverged)")
    table = summary(records, select)
    out_dir.mkdir(parents=True, exist_ok=True)
    from mtlbench.bench.curve_plots import curve_plots
    from mtlbench.bench.front_plots import front_plots

    return [_heatmap(table, records, out_dir, select), _dots(table, records, out_dir, select),
            _quality_vs_cost(table, records, out_dir), *_conflict_plots(records, out_dir),
            *curve_plots(records, out_dir), *front_plots(records, out_dir, select)]


def _heatmap(table, records, out_dir: Path, select: str) -> Path:
    """Recipes x tasks: each cell the mean (colour: its place between the column's worst and best, so tasks on
    different scales share one colour map), the 95 % interval and the significance marker."""
    columns = primary_columns(records) + ["overall"]
    rows = _order(table)
    values = np.array([[table.loc[k, ("mean", c)] for c in columns] for k in rows], dtype=float)
    shade = np.full_like(values, np.nan)
    for j, column in enumerate(columns):
        finite = np.isfinite(values[:, j])
        if finite.sum() > 1:
            lower_better = any(column.endswith(" " + SHORT.get(m, m)) for m in HIGHER_IS_BETTER if lower_is_better(m))
            col = -values[finite, j] if lower_better else values[finite, j]
            low, high = col.min(), col.max()
            shade[finite, j] = (col - low) / (high - low) if high > low else 0.5
    fig, ax = plt.subplots(figsize=(1.9 * len(columns) + 2.6, 0.42 * len(rows) + 1.4))
    ax.imshow(np.ma.masked_invalid(shade), cmap="RdYlGn", vmin=-0.15, vmax=1.15, aspect="auto")
    for i, key in enumerate(rows):
        for j, column in enumerate(columns):
            mean = table.loc[key, ("mean", column)]
            if np.isnan(mean):
                ax.text(j, i, "–", ha="center", va="center", fontsize=8, color="grey")
                continue
            low, high = table.loc[key, ("ci_low", column)], table.loc[key, ("ci_high", column)]
            text = f"{mean:.3f}" + marker(table, key, column)
            if not np.isnan(low) and table.loc[key, ("n", "seeds")] >= MIN_SEEDS:
                text += f"\n[{low:.3f}, {high:.3f}]"
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(columns)), columns, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(rows)), [_label(table, k) for k in rows], fontsize=8)
    seeds = sorted(set(table[("n", "seeds")]))
    enough = min(seeds) >= MIN_SEEDS
    fig.suptitle(f"{records[0].suite}: dev {select}-epoch primary metrics, mean"
                 + (" [95 % interval]" if enough else "") + f" over {'/'.join(map(str, seeds))} seed"
                 + ("s" if seeds != [1] else "") + "; colour: worst to best in each column; "
                 + ("\u25b2/\u25bc significantly better/worse than the baseline" if enough
                    else f"intervals and \u25b2/\u25bc from {MIN_SEEDS} seeds"), fontsize=8, y=0.995)
    fig.tight_layout()
    return _save(fig, out_dir / "heatmap.png")


def _family_legend(where, families, **placement) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=FAMILY_COLORS[f], label=f) for f in FAMILIES if f in families]
    where.legend(handles=handles, fontsize=7, title="family", title_fontsize=7, **(placement or {"loc": "best"}))


def _dots(table, records, out_dir: Path, select: str) -> Path:
    """One panel per task: each recipe's mean with its 95 % interval, coloured by family, and the
    baseline recipe's mean as a line."""
    columns = primary_columns(records)
    rows = _order(table)
    fig, axes = plt.subplots(1, len(columns), sharey=True, squeeze=False,
                             figsize=(3.2 * len(columns) + 2.0, 0.3 * len(rows) + 1.4))
    y = np.arange(len(rows))
    families = [table.loc[k, ("info", "family")] for k in rows]
    colors = [FAMILY_COLORS[f] for f in families]
    base = [k for k in rows if table.loc[k, ("info", "baseline")]]
    for ax, column in zip(axes[0], columns):
        mean = np.array([table.loc[k, ("mean", column)] for k in rows], dtype=float)
        low = np.array([table.loc[k, ("ci_low", column)] for k in rows], dtype=float)
        high = np.array([table.loc[k, ("ci_high", column)] for k in rows], dtype=float)
        shown = np.array([table.loc[k, ("n", "seeds")] >= MIN_SEEDS for k in rows])  # as the table: from 3 seeds
        error = np.nan_to_num(np.vstack([mean - low, high - mean])) * shown
        for i in range(len(rows)):
            if np.isfinite(mean[i]):
                ax.errorbar(mean[i], y[i], xerr=error[:, i:i + 1], fmt="o", ms=4, capsize=2, color=colors[i])
        if base:
            ax.axvline(table.loc[base[0], ("mean", column)], color="grey", lw=0.8, ls="--")
        ax.set_title(f"{column} (dev)", fontsize=9)
        ax.grid(axis="x", alpha=0.4)
        ax.tick_params(axis="x", labelsize=8)
    axes[0][0].set_yticks(y, [_label(table, k) for k in rows], fontsize=8)
    axes[0][0].invert_yaxis()
    enough = min(table[("n", "seeds")]) >= MIN_SEEDS
    fig.suptitle(f"{records[0].suite}: per-task dev metrics ({select} epoch), "
                 + ("mean and 95 % interval over seeds" if enough else f"means (intervals from {MIN_SEEDS} seeds)")
                 + "; dashed: the baseline recipe", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.88, 1))  # room on the right for the legend, off the points
    _family_legend(fig, set(families), loc="center right")
    return _save(fig, out_dir / "metrics.png")


def _quality_vs_cost(table, records, out_dir: Path) -> Path:
    """Overall against the paired step-cost ratio (whole-run throughput for records without it)."""
    keys = [k for k in table.index if not np.isnan(table.loc[k, ("mean", "overall")])]
    paired = all(not np.isnan(table.loc[k, ("mean", "cost x")]) for k in keys)
    x_column = "cost x" if paired else "train ex/s"
    fig, ax = plt.subplots(figsize=(10, 6.5))
    if paired:  # ratios: 2x and 0.5x the baseline equally far from it, and the crowd near 1 spread out
        ax.set_xscale("log")
    xs = [table.loc[k, ("mean", x_column)] for k in keys]
    ys = [table.loc[k, ("mean", "overall")] for k in keys]
    families = [table.loc[k, ("info", "family")] for k in keys]
    for k, x, y, f in zip(keys, xs, ys, families):
        yerr = table.loc[k, ("std", "overall")]
        ax.errorbar(x, y, yerr=0 if np.isnan(yerr) else yerr, xerr=_x_error(table, k, x_column, x), fmt="o", ms=5,
                    color=FAMILY_COLORS[f], elinewidth=0.8, alpha=0.9)
    labels = [ax.text(x, y, k[1], fontsize=7) for k, x, y in zip(keys, xs, ys)]
    adjust_text(labels, x=xs, y=ys, ax=ax, expand=(1.15, 1.4), max_move=(40, 40),
                arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5})
    if paired:
        from matplotlib.ticker import FormatStrFormatter

        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.set_xlabel(f"step cost per example \u00d7 the baseline recipe (paired, {baseline_recipe(records)})")
    else:
        ax.set_xlabel("training throughput (examples/s; records without a paired cost)")
    ax.set_ylabel("overall (mean primary dev metric)")
    seeds = int(min(table.loc[k, ("n", "seeds")] for k in keys)) if keys else 0
    spread = "overall: mean \u00b1 std over seeds" if seeds > 1 else "overall: one seed each, no spread"
    if paired:
        spread += "; cost: 95 % interval over its rounds"
    ax.set_title(f"{records[0].suite}: quality vs cost ({spread})", fontsize=10)
    left_out = [k[1] for k in table.index if k not in keys]
    if left_out:  # single-task recipes have no overall score
        ax.text(0.0, -0.1, f"not shown (no overall over every task): {', '.join(left_out)}", fontsize=7,
                color="grey", transform=ax.transAxes, va="top", wrap=True)
    ax.grid(alpha=0.3)
    _family_legend(ax, set(families))
    fig.tight_layout()
    return _save(fig, out_dir / "quality_vs_cost.png")


def _x_error(table, key, column: str, x: float):
    """The paired cost's 95 % interval over its rounds (asymmetric); throughput's std over seeds."""
    if column == "cost x":
        low, high = table.loc[key, ("ci_low", column)], table.loc[key, ("ci_high", column)]
        return 0 if np.isnan(low) else [[x - low], [high - x]]
    spread = table.loc[key, ("std", column)]
    return 0 if np.isnan(spread) else spread


def _conflicts_by_recipe(records: list[RunRecord]) -> tuple[dict[str, list[dict]], bool]:
    """Per recipe (the suite's order), each seed's per-pair conflict statistics, and whether they
    are the probe's (every multi-task recipe, bench.conflict_probe) or, for records from before
    it, the gradient combiners' own (the recipes that form task gradients only)."""
    ordered = sorted(records, key=lambda r: (r.recipe_index, r.seed))
    probed: dict[str, list[dict]] = {}
    for record in ordered:
        found = conflict_probe.summarise(record.history)
        if found:
            probed.setdefault(record.recipe_name, []).append(found)
    if probed:
        return probed, True
    combined: dict[str, list[dict]] = {}
    for record in ordered:
        summary = (record.strategies or {}).get("combiner", {})
        if "conflicts" in summary:
            combined.setdefault(record.recipe_name, []).append(summary["conflicts"])
    return combined, False


def _conflict_plots(records: list[RunRecord], out_dir: Path) -> list[Path]:
    conflicts, probed = _conflicts_by_recipe(records)
    if not conflicts:
        return []
    recipes = list(conflicts)
    pairs = list(conflicts[recipes[0]][0])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(recipes)
    x = np.arange(len(pairs))
    unit = "probes" if probed else "steps"
    for panel, (stat, label) in zip(axes, [("negative_cosine_fraction", f"fraction of {unit} with cos < 0"),
                                           ("mean_cosine", "mean cosine")]):
        for i, (recipe, color) in enumerate(zip(recipes, _colors(len(recipes)))):
            values = np.array([[_pair_value(seed, pair, stat) for pair in pairs] for seed in conflicts[recipe]])
            spread = np.nanstd(values, 0, ddof=1) if len(values) > 1 else None  # one seed: no bar of zero width
            base = recipe == baseline_recipe(records)
            panel.bar(x + i * width - 0.4 + width / 2, np.nanmean(values, 0), width, yerr=spread, capsize=2,
                      label=recipe + (" (baseline)" if base else ""), color=color,
                      hatch="//" if base else None, edgecolor="black" if base else None, linewidth=0.5)
        panel.set_xticks(x, pairs)
        panel.set_ylabel(label)
        panel.axhline(0.5 if stat == "negative_cosine_fraction" else 0.0, color="grey", lw=0.8, ls="--")
    axes[0].set_title("gradient conflicts per task pair (shared parameters)")
    axes[1].set_title("task-gradient cosine per task pair")
    seeds = max(len(v) for v in conflicts.values())
    unmeasured = sorted({r.recipe_name for r in records} - set(recipes))
    how = (f"measured after each epoch on the first {conflict_probe.PROBE_BATCHES} training batches per task, "
           "the same rows for every recipe" if probed else
           "measured at every step by the combiners that form task gradients (records from before the probe)")
    left_out = f"not shown (a single task, or nothing shared training): {', '.join(unmeasured) or '-'}"
    fig.text(0.01, 0.01, ("mean \u00b1 std over seeds" if seeds > 1 else "one seed: no spread") + f"; {how}; "
             f"{left_out}; dashed: no conflict preference", fontsize=7, color="grey", wrap=True)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return [_save(fig, out_dir / "gradient_conflicts.png")]


def _pair_value(stats: dict, pair: str, stat: str) -> float:
    """A pair's statistic whichever way round the run named it (NaN if the run lacks the pair)."""
    a, b = pair.split("|", 1)
    found = stats.get(pair) or stats.get(f"{b}|{a}")
    return found[stat] if found else float("nan")
