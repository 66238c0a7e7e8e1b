"""Curves over training from run records, per recipe as the mean over its seeds with a ±1 std band:
each task's training loss (the tracked per-step series where the run was tracked, else the
per-epoch mean) and dev metric, and the gradient combiner's task weights and pair cosines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mtlbench.bench.figures import colors as _colors
from mtlbench.bench.figures import plt
from mtlbench.bench.figures import save as _save
from mtlbench.bench.records import RunRecord


def curve_plots(records: list[RunRecord], out_dir: Path) -> list[Path]:
    by_recipe: dict[str, list[RunRecord]] = {}
    for record in sorted(records, key=lambda r: (r.recipe_index, r.seed)):
        by_recipe.setdefault(record.recipe_name, []).append(record)
    written = [_training_curves(by_recipe, out_dir)]
    combiner = _combiner_curves(by_recipe, out_dir)
    return written + ([combiner] if combiner else [])


def _band(ax, runs: list[tuple[list, list]], color, label: str) -> None:
    """Mean over runs on the steps they share, with a ±1 std band where there are two or more."""
    shared = sorted(set.intersection(*(set(steps) for steps, _ in runs)))
    if not shared:
        return
    values = np.array([[dict(zip(steps, ys))[s] for s in shared] for steps, ys in runs], dtype=float)
    mean = np.nanmean(values, axis=0)
    ax.plot(shared, mean, color=color, label=label, lw=1.2, marker="o" if len(shared) < 4 else None, ms=3)
    if len(runs) > 1:
        spread = np.nanstd(values, axis=0)
        ax.fill_between(shared, mean - spread, mean + spread, color=color, alpha=0.2, lw=0)


def _training_loss(record: RunRecord, task: str) -> tuple[list, list] | None:
    values = (record.series or {}).get("values", {}).get(f"loss/{task}")
    if values:
        return record.series["steps"], [np.nan if v is None else v for v in values]
    per_epoch = [(e["step"], e["train_loss"][task]) for e in record.history if task in e.get("train_loss", {})]
    return ([s for s, _ in per_epoch], [v for _, v in per_epoch]) if per_epoch else None


def _dev_metric(record: RunRecord, task: str) -> tuple[list, list] | None:
    metric = record.primary_metrics[task]
    points = [(e["step"], e["dev"][task][metric]) for e in record.history
              if e["dev"].get(task, {}).get(metric) is not None]
    return ([s for s, _ in points], [v for _, v in points]) if points else None


def _training_curves(by_recipe: dict[str, list[RunRecord]], out_dir: Path) -> Path:
    tasks = list(dict.fromkeys(t for runs in by_recipe.values() for r in runs for t in r.tasks))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 2.6 * len(tasks)), squeeze=False)
    for (recipe, runs), color in zip(by_recipe.items(), _colors(len(by_recipe))):
        for row, task in enumerate(tasks):
            for column, curve in enumerate((_training_loss, _dev_metric)):
                found = [c for c in (curve(r, task) for r in runs if task in r.tasks) if c]
                if found:
                    _band(axes[row, column], found, color, recipe)
    for row, task in enumerate(tasks):
        metric = next(r.primary_metrics[task] for runs in by_recipe.values() for r in runs if task in r.tasks)
        axes[row, 0].set_ylabel(f"{task}\ntraining loss", fontsize=8)
        axes[row, 1].set_ylabel(f"{task}\ndev {metric}", fontsize=8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("training step")
    axes[-1, 1].set_xlabel("training step (end of each epoch)")
    axes[0, 0].set_title("training loss (per logged step where tracked, else epoch mean)", fontsize=9)
    axes[0, 1].set_title("dev metric after each epoch", fontsize=9)
    if axes[0, 1].get_legend_handles_labels()[0]:  # records without a history draw no curve
        axes[0, 1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    seeds = max(len(runs) for runs in by_recipe.values())
    fig.suptitle("mean over seeds, band ±1 std" if seeds > 1 else "one seed: no band", fontsize=9)
    fig.tight_layout()
    return _save(fig, out_dir / "training_curves.png")


def _combiner_lines(record: RunRecord, column: int) -> tuple[dict[str, tuple[list, list]], str]:
    """One run's task weights (column 0) or pair cosines (1) by name: the tracked per-step series
    where the run was tracked, else the combiner's own window means; and what a point is."""
    prefix = ("weight/", "cosine/")[column]
    series = record.series or {"steps": [], "values": {}}
    tracked = {name[len(prefix):]: (series["steps"], [np.nan if v is None else v for v in values])
               for name, values in series["values"].items() if name.startswith(prefix)}
    if tracked:
        order = {task: i for i, task in enumerate(record.tasks)}  # weights in the tasks' order, as the trajectory
        tracked = dict(sorted(tracked.items(), key=lambda item: order.get(item[0], len(order))))
        return tracked, f"every {series['every']} training steps"
    trajectory = (record.strategies or {}).get("combiner", {}).get(("weight_trajectory", "cosine_trajectory")[column])
    if not trajectory:
        return {}, ""
    return ({name: (trajectory["step"], values) for name, values in trajectory.items() if name not in ("every", "step")},
            f"means of {trajectory['every']} combiner steps")


def _combiner_curves(by_recipe: dict[str, list[RunRecord]], out_dir: Path) -> Path | None:
    """Task weights and pair cosines per recipe (rows), mean over seeds with a ±1 std band."""
    lines = {recipe: [[_combiner_lines(r, column) for r in runs] for column in (0, 1)]
             for recipe, runs in by_recipe.items()}
    shown = {recipe: found for recipe, found in lines.items() if any(named for column in found for named, _ in column)}
    if not shown:
        return None
    fig, axes = plt.subplots(len(shown), 2, figsize=(10, 2.5 * len(shown)), squeeze=False)
    for row, (recipe, columns) in enumerate(shown.items()):
        for column, runs in enumerate(columns):
            ax, runs = axes[row, column], [(named, what) for named, what in runs if named]
            if not runs:
                ax.set_visible(False)
                continue
            names = list(runs[0][0])
            for name, color in zip(names, _colors(len(names))):
                _band(ax, [named[name] for named, _ in runs if name in named], color, name)
            ax.set_title(f"{recipe}: {('task weights', 'gradient cosines')[column]} ({runs[0][1]})", fontsize=8)
            if column:
                ax.axhline(0.0, color="grey", lw=0.6, ls="--")
            ax.legend(fontsize=6)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    seeds = max(len(runs) for runs in by_recipe.values())
    fig.suptitle("the combiner over training: weights w in w @ G, pairwise cosines ("
                 + ("mean over seeds, ±1 std)" if seeds > 1 else "one seed)"), fontsize=9)
    fig.tight_layout()
    return _save(fig, out_dir / "combiner_curves.png")
