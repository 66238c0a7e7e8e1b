"""One plot per pair of tasks: the scalarisation front's points (the static-weight sum over the task
simplex, bench.front) with their 95 % intervals over seeds, the non-dominated ones joined, and every
compared recipe's point with its interval on top. A recipe above and right of the line is beyond
what any static weighting reached on that pair."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.pyplot as plt
from mtlbench.bench import front
from mtlbench.bench.figures import colors, save
from mtlbench.bench.records import RunRecord
from mtlbench.bench.tables import SHORT, baseline_recipe, record_tasks, suite_tasks
from mtlbench.bench.verdict import recipe_points
from mtlbench.tasks.errors import counted


def front_plots(records: list[RunRecord], out_dir: Path, select: str = "last") -> list[Path]:
    """front-A-B.png for every pair of the suite's tasks, when the records hold the front."""
    front_runs = [r for r in records if r.front is not None and r.finished]
    if not front_runs:
        return []
    compared = [r for r in records if r.front is None and len(record_tasks(r)) == len(suite_tasks(r))]
    points, recipes = recipe_points(front_runs, select), recipe_points(compared, select)
    base = baseline_recipe(records)
    tasks = suite_tasks(front_runs[0])
    metrics = front_runs[0].primary_metrics
    written = []
    for a, b in itertools.combinations(tasks, 2):
        fig, axis = plt.subplots(figsize=(9.5, 6))
        xy = [(p[a][0], p[b][0]) for p in points.values()]
        axis.errorbar([x for x, _ in xy], [y for _, y in xy], xerr=[p[a][1] for p in points.values()],
                      yerr=[p[b][1] for p in points.values()], fmt="o", color="0.55", ms=5, capsize=2, lw=0.8,
                      label=f"static weights ({len(xy)} points of the simplex)")
        hull = sorted(xy[i] for i in front.non_dominated(xy))
        axis.plot([x for x, _ in hull], [y for _, y in hull], "--", color="black", lw=1.5, zorder=3,
                  label="non-dominated (on this pair)")
        palette = [c for c in colors(len(recipes) + 2) if len(set(c[:3])) > 1]  # no grey: the front is grey
        for (name, point), color in zip(recipes.items(), palette):
            axis.errorbar(point[a][0], point[b][0], xerr=point[a][1], yerr=point[b][1], fmt="D" if name == base
                          else "s", color=color, ms=8 if name == base else 7, capsize=3, mec="black" if name == base
                          else color, label=name + (" (baseline)" if name == base else ""))
        axis.set_xlabel(f"{a} {SHORT.get(metrics[a], metrics[a])} (dev)")
        axis.set_ylabel(f"{b} {SHORT.get(metrics[b], metrics[b])} (dev)")
        seeds = len({r.seed for r in front_runs})
        axis.set_title(f"Scalarisation front, {a} vs {b}: means over {counted(seeds, 'seed')}, 95 % intervals", fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        fig.tight_layout()
        written.append(save(fig, Path(out_dir) / f"front-{a}-{b}.png"))
    return written
