"""Plots from run records: per-task metric bars and overall-vs-throughput."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display
import matplotlib.pyplot as plt
import numpy as np

from bench.tables import SHORT, summary


def write_plots(records: list[dict], out_dir: Path, select: str = "last") -> list[Path]:
    table = summary(records, select)
    mean, std = table["mean"], table["std"]
    recipes = list(mean.index.get_level_values("recipe"))
    primary = records[0]["primary_metrics"]
    columns = [f"{task} {SHORT[metric]}" for task, metric in primary.items()]
    out_dir.mkdir(parents=True, exist_ok=True)

    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(columns) * max(1, len(recipes)) / 2 + 2), 4))
    width = 0.8 / len(recipes)
    x = np.arange(len(columns))
    for i, recipe in enumerate(recipes):
        ax.bar(x + i * width - 0.4 + width / 2, mean[columns].iloc[i], width,
               yerr=std[columns].iloc[i].fillna(0), label=recipe, capsize=2)
    ax.set_xticks(x, [f"{c} (dev)" for c in columns])
    ax.set_ylabel("primary metric")
    ax.set_ylim(min(0.0, float(np.nanmin(mean[columns].to_numpy())) - 0.05), 1.0)  # Pearson can be negative
    ax.set_title(f"{records[0]['suite']}: per-task dev metrics ({select} epoch)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: bars reach the top
    fig.tight_layout()
    bars = out_dir / "metrics.png"
    fig.savefig(bars, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(mean["train ex/s"], mean["overall"], yerr=std["overall"].fillna(0), fmt="o")
    for recipe, xs, ys in zip(recipes, mean["train ex/s"], mean["overall"]):
        ax.annotate(recipe, (xs, ys), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("training throughput (examples/s)")
    ax.set_ylabel("overall (mean primary metric)")
    ax.set_title("quality vs cost")
    fig.tight_layout()
    scatter = out_dir / "overall_vs_throughput.png"
    fig.savefig(scatter, dpi=120)
    plt.close(fig)
    return [bars, scatter]
