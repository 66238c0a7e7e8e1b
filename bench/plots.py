"""Plots from run records: per-task metric bars, overall-vs-throughput, and for gradient combiners
the per-pair gradient conflicts and the task-weight trajectories."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display
import matplotlib.pyplot as plt
import numpy as np
from adjustText import adjust_text

from bench.tables import SHORT, summary


def _colors(count: int) -> list:
    """One distinct colour per recipe (matplotlib's default cycle repeats after ten)."""
    if count <= 10:
        return list(plt.get_cmap("tab10").colors)[:count]
    if count <= 20:
        return list(plt.get_cmap("tab20").colors)[:count]
    return [plt.get_cmap("turbo")(i / (count - 1)) for i in range(count)]


def write_plots(records: list[dict], out_dir: Path, select: str = "last") -> list[Path]:
    table = summary(records, select)
    mean, std = table["mean"], table["std"]
    recipes = list(mean.index.get_level_values("recipe"))
    primary = records[0]["primary_metrics"]
    columns = [f"{task} {SHORT.get(metric, metric)}" for task, metric in primary.items()]
    out_dir.mkdir(parents=True, exist_ok=True)

    # One panel per task, one row per recipe: mean +- std over seeds as a dot, readable for any
    # number of recipes (bars side by side stop being readable past ten or so).
    fig, axes = plt.subplots(1, len(columns), sharey=True, squeeze=False,
                             figsize=(3.4 * len(columns) + 1.6, 0.27 * len(recipes) + 1.5))
    y = np.arange(len(recipes))
    for ax, column in zip(axes[0], columns):
        ax.errorbar(mean[column], y, xerr=std[column].fillna(0), fmt="o", ms=4, capsize=2)
        ax.set_title(f"{column} (dev)", fontsize=9)
        ax.grid(axis="x", alpha=0.4)
        ax.tick_params(axis="x", labelsize=8)
    axes[0][0].set_yticks(y, recipes, fontsize=8)
    axes[0][0].invert_yaxis()  # the suite's order, top to bottom
    fig.suptitle(f"{records[0]['suite']}: per-task dev metrics, mean \u00b1 std over seeds ({select} epoch)",
                 fontsize=10)
    fig.tight_layout()
    bars = out_dir / "metrics.png"
    fig.savefig(bars, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.errorbar(mean["train ex/s"], mean["overall"], yerr=std["overall"].fillna(0), fmt="o", ms=4,
                elinewidth=0.8, alpha=0.8)
    labels = [ax.text(xs, ys, recipe, fontsize=7) for recipe, xs, ys in
              zip(recipes, mean["train ex/s"], mean["overall"])]
    adjust_text(labels, x=list(mean["train ex/s"]), y=list(mean["overall"]), ax=ax,
                arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5})  # labels of close points apart
    ax.set_xlabel("training throughput (examples/s)")
    ax.set_ylabel("overall (mean primary metric)")
    ax.set_title("quality vs cost")
    fig.tight_layout()
    scatter = out_dir / "overall_vs_throughput.png"
    fig.savefig(scatter, dpi=120)
    plt.close(fig)
    return [bars, scatter, *_conflict_plots(records, out_dir)]


def _by_recipe(records: list[dict], key: str) -> dict[str, list[dict]]:
    """Combiner summaries holding `key`, grouped by recipe in the suite's order."""
    grouped: dict[str, list[dict]] = {}
    for record in sorted(records, key=lambda r: (r.get("recipe_index", 0), r["seed"])):
        summary = record.get("strategies", {}).get("combiner", {})
        if key in summary:
            grouped.setdefault(record["recipe_name"], []).append(summary)
    return grouped


def _conflict_plots(records: list[dict], out_dir: Path) -> list[Path]:
    written = []
    conflicts = _by_recipe(records, "conflicts")
    if conflicts:
        recipes = list(conflicts)
        pairs = list(conflicts[recipes[0]][0]["conflicts"])
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        width = 0.8 / len(recipes)
        x = np.arange(len(pairs))
        for panel, (stat, label) in zip(axes, [("negative_cosine_fraction", "fraction of steps with cos < 0"),
                                               ("mean_cosine", "mean cosine")]):
            for i, (recipe, color) in enumerate(zip(recipes, _colors(len(recipes)))):
                values = np.array([[s["conflicts"][pair][stat] for pair in pairs] for s in conflicts[recipe]])
                panel.bar(x + i * width - 0.4 + width / 2, values.mean(0), width, yerr=values.std(0),
                          label=recipe, capsize=2, color=color)
            panel.set_xticks(x, pairs)
            panel.set_ylabel(label)
            panel.axhline(0.5 if stat == "negative_cosine_fraction" else 0.0, color="grey", lw=0.8, ls="--")
        axes[0].set_title("gradient conflicts per task pair (shared parameters)")
        axes[1].set_title("task-gradient cosine per task pair")
        axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        written.append(out_dir / "gradient_conflicts.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    trajectories = _by_recipe(records, "weight_trajectory")
    if trajectories:
        recipes = list(trajectories)
        columns = min(3, len(recipes))
        rows = -(-len(recipes) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
        for ax, recipe in zip(axes.flat, recipes):
            trajectory = trajectories[recipe][0]["weight_trajectory"]  # the first seed
            for task in (k for k in trajectory if k not in ("every", "step")):
                ax.plot(trajectory["step"], trajectory[task], label=task)
            ax.set_title(recipe, fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel(f"task weight (mean of {trajectory['every']} steps)", fontsize=7)
        for ax in list(axes.flat)[len(recipes):]:
            ax.set_visible(False)
        axes.flat[0].legend(fontsize=7)
        fig.suptitle("task weights w in the update w @ G over training (first seed)")
        fig.tight_layout()
        written.append(out_dir / "task_weights.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written
