"""Comparison tables from run records: a row per recipe, mean +- std over seeds.

Markdown and LaTeX for reading, CSV (separate mean and std columns) for machines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.records import write_text_atomic
from tasks.errors import UserError

SHORT = {"accuracy": "acc", "f1_macro": "F1", "pearson": "r", "spearman": "rho", "f1": "F1", "precision": "prec",
         "recall": "rec", "perplexity": "ppl"}


def runs_frame(records: list[dict], select: str = "last") -> pd.DataFrame:
    """One row per run: recipe, seed, each task metric, overall and cost."""
    rows = []
    for record in records:
        if select == "test" and "test_at_best_dev" not in record:
            raise UserError(f"run {record['run_id']}: no test scores (its suite did not set test = true)")
        metrics = {"last": "metrics", "best": "best", "test": "test_at_best_dev"}[select]
        metrics = record[metrics]
        row = {"suite": record["suite"], "recipe": record["recipe_name"], "recipe_index": record["recipe_index"],
               "seed": record["seed"]}
        for task, values in metrics.items():
            for metric, value in values.items():
                if metric != "epoch":
                    row[f"{task} {SHORT.get(metric, metric)}"] = np.nan if value is None else value
        if select == "test":
            primary = record["primary_metrics"]
            scores = [metrics[t].get(primary[t]) for t in primary]
            row["overall"] = np.nan if None in scores else sum(scores) / len(scores)
        else:
            row["overall"] = record["overall" if select == "last" else "overall_best"]
        row["train ex/s"] = record["train"]["examples_per_second"]
        row["step ms"] = record["train"]["step_seconds_median"] * 1000
        row["peak MB"] = record["peak_memory_mb"]
        rows.append(row)
    return pd.DataFrame(rows)


def summary(records: list[dict], select: str = "last") -> pd.DataFrame:
    """Mean and std per recipe (suite order), plus cost relative to the first row."""
    runs = runs_frame(records, select)
    keys = ["suite", "recipe"]
    order = runs.groupby(keys, sort=False)["recipe_index"].min().sort_values(kind="stable")
    values = [c for c in runs.columns if c not in keys + ["recipe_index", "seed"]]
    grouped = runs.groupby(keys, sort=False)[values]
    mean = grouped.mean().loc[order.index]
    std = grouped.std(ddof=1).loc[order.index]  # NaN with one seed: shown as no spread, not as 0
    mean["cost x"] = mean["train ex/s"].iloc[0] / mean["train ex/s"]  # time per example vs first row
    std["cost x"] = np.nan
    table = pd.concat({"mean": mean, "std": std}, axis=1)
    table[("n", "seeds")] = runs.groupby(keys, sort=False)["seed"].nunique().loc[order.index]
    return table


def _formatted(table: pd.DataFrame) -> pd.DataFrame:
    mean, std = table["mean"], table["std"]
    out = pd.DataFrame(index=mean.index.get_level_values("recipe"))
    for column in mean.columns:
        digits = 3 if column in ("overall",) or " " in column and column.split(" ")[1] in SHORT.values() else 1
        if column == "cost x":
            digits = 2
        cells = []
        for m, s in zip(mean[column], std[column]):
            cell = "nan" if pd.isna(m) else f"{m:.{digits}f}"
            if not pd.isna(s):
                cell += f" ± {s:.{digits}f}"
            cells.append(cell)
        out[column] = cells
    out["seeds"] = table[("n", "seeds")].to_numpy()
    return out


def markdown(table: pd.DataFrame) -> str:
    return _formatted(table).to_markdown()


def latex(table: pd.DataFrame) -> str:
    return _formatted(table).to_latex(escape=True)


def csv(table: pd.DataFrame) -> str:
    flat = pd.DataFrame(index=table.index)
    for stat, column in table.columns:
        flat["seeds" if stat == "n" else column if stat == "mean" else f"{column} {stat}"] = table[(stat, column)]
    return flat.reset_index().to_csv(index=False, float_format="%.6g")


def write_tables(records: list[dict], out_dir: Path, select: str = "last") -> dict[str, Path]:
    table = summary(records, select)
    written = {}
    for name, text in (("table.md", markdown(table) + "\n"), ("table.csv", csv(table)), ("table.tex", latex(table))):
        write_text_atomic(out_dir / name, text)
        written[name] = out_dir / name
    return written
