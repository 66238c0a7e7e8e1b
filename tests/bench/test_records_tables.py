import json
import math

import pytest
from mtlbench.bench import files, records, tables
from mtlbench.bench.records import RunRecord
from mtlbench.tasks.errors import UserError


def record(recipe, index, seed, sst, sts, ex_s, cost=None):
    return RunRecord.from_dict({"run_id": f"{recipe}-seed{seed}", "suite": "s", "recipe_name": recipe, "recipe_index": index,
            "seed": seed, "primary_metrics": {"sst": "accuracy", "sts": "pearson"},
            "metrics": {"sst": {"accuracy": sst, "f1_macro": sst}, "sts": {"pearson": sts, "spearman": sts}},
            "best": {"sst": {"epoch": 1, "accuracy": sst, "f1_macro": sst}, "sts": {"epoch": 1, "pearson": sts, "spearman": sts}},
            "overall": (sst + sts) / 2, "overall_best": (sst + sts) / 2,
            "train": {"examples_per_second": ex_s, "step_seconds_median": 0.01}, "peak_memory_mb": 100.0,
            "cost": None if cost is None else {"ratio": cost}})


RECORDS = [record("b", 1, 0, 0.6, 0.7, 500.0, 2.1), record("a", 0, 0, 0.5, 0.8, 1000.0, 1.02),
           record("a", 0, 1, 0.7, 0.6, 1000.0, 0.98)]


def test_summary_means_stds_intervals_order_and_paired_cost():
    table = tables.summary(RECORDS)
    assert list(table.index.get_level_values("recipe")) == ["a", "b"]  # suite order, not file order
    mean, std = table["mean"], table["std"]
    assert mean.loc[("s", "a"), "sst acc"] == pytest.approx(0.6)
    assert std.loc[("s", "a"), "sst acc"] == pytest.approx(0.1414, abs=1e-4)
    assert math.isnan(std.loc[("s", "b"), "sst acc"])  # one seed: no spread claimed
    # cost x is the recorded paired ratio, not whole-run throughput (b's 500 ex/s would say 2.0)
    assert mean["cost x"].tolist() == pytest.approx([1.0, 2.1])
    assert table[("n", "seeds")].tolist() == [2, 1]
    # 95 % t-interval over 2 seeds, mean +- t(0.975, 1) * std / sqrt(2) = 0.6 +- 12.706 * 0.1, clipped to [0, 1]
    assert table[("ci_low", "sst acc")].iloc[0] == 0.0 and table[("ci_high", "sst acc")].iloc[0] == 1.0
    assert table[("ci_low", "sts r")].iloc[0] == pytest.approx(0.7 - 1.2706, abs=1e-3)  # inside [-1, 1]: kept
    assert table[("ci_high", "sts r")].iloc[0] == 1.0
    assert math.isnan(table[("ci_low", "sst acc")].iloc[1])
    assert table[("info", "baseline")].tolist() == [True, False]  # older records: the first recipe


def test_renderings_carry_the_numbers():
    table = tables.summary(RECORDS)
    md = tables.markdown(table)
    assert "0.600 ± 0.141 |" in md and "| b " in md and "| a (baseline) " in md  # 2 seeds: no interval
    assert md.endswith("1 seed: no 95 % intervals and no ▲ / ▼ where a recipe has fewer than 3 seeds "
                       "(with fewer they would say more than the runs can; --seeds 3 or more)")
    assert "| 0.600 " in md  # one seed: the value alone, as written (not re-parsed as a number)
    csv = tables.csv(table)
    assert csv.splitlines()[0].startswith("suite,recipe,sst acc")
    assert "sst acc std" in csv.splitlines()[0]
    assert "\\begin{tabular}" in tables.latex(table)


def test_intervals_stay_in_the_metric_range_and_print_from_three_seeds():
    """Three seeds: t(0.975, 2) / sqrt(3) = 2.484; sst 0.90 +- 0.10 * 2.484 is cut at 1, sts inside."""
    three = [record("a", 0, s, sst, sts, 1000.0) for s, (sst, sts) in enumerate([(0.8, 0.5), (0.9, 0.6), (1.0, 0.7)])]
    table = tables.summary(three)
    assert table[("ci_low", "sst acc")].iloc[0] == pytest.approx(0.9 - 0.2484, abs=1e-4)
    assert table[("ci_high", "sst acc")].iloc[0] == 1.0
    assert table[("ci_high", "sts r")].iloc[0] == pytest.approx(0.6 + 0.2484, abs=1e-4)
    assert tables.column_ranges(three)["overall"] == (-0.5, 1.0)  # the mean of [0, 1] and [-1, 1]
    md = tables.markdown(table)
    assert "0.900 ± 0.100 [0.652, 1.000]" in md and "seeds:" not in md


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "r.json"
    files.write_json_atomic(target, {"run_id": "x", "value": float("nan")})
    assert json.loads(target.read_text()) == {"run_id": "x", "value": None}
    with pytest.raises(TypeError):
        files.write_json_atomic(target, {"run_id": "y", "bad": object()})
    assert json.loads(target.read_text())["run_id"] == "x"  # the old record survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


def test_load_records_reports_the_broken_file(tmp_path):
    (tmp_path / "good.json").write_text(json.dumps(RECORDS[0].to_dict()))
    (tmp_path / "bad.json").write_text("{\n  oops")
    with pytest.raises(UserError, match="bad.json: not valid JSON \\(line 2"):
        records.load_records(tmp_path)
    with pytest.raises(UserError, match="missing: not a directory"):
        records.load_records(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no run records"):
        records.load_records(tmp_path / "empty")


def test_a_record_writes_today_s_schema_in_order_and_loads_back_the_same(tmp_path):
    """RunRecord.to_dict: the status's keys in their order (test_at_best_dev only when present),
    keys of a newer schema kept; from_dict(to_dict()) is the same record."""
    finished = RECORDS[0]
    assert list(finished.to_dict()) == [k for k in RunRecord.KEYS["finished"] if k not in RunRecord.OPTIONAL]
    diverged = RunRecord.from_dict({**RECORDS[0].to_dict(), "status": "diverged",
                                    "diverged": {"what": "non-finite loss (nan)", "task": "sst", "epoch": 2,
                                                 "step": 7}, "future_key": [1, 2]})
    written = diverged.to_dict()
    assert list(written) == [*(k for k in RunRecord.KEYS["diverged"] if k not in RunRecord.OPTIONAL), "future_key"]
    assert "metrics" not in written
    diverged.write(tmp_path / "d.json")
    (loaded,) = records.load_records(tmp_path)
    assert loaded.to_dict() == written and loaded.path == tmp_path / "d.json" and not loaded.finished
    assert json.loads((tmp_path / "d.json").read_text())["diverged"]["step"] == 7


def test_a_record_of_an_older_schema_loads_with_what_it_has(tmp_path):
    """Records from before `status`, `cost` and `examples_file` (results/quick/) are finished runs."""
    old = {k: v for k, v in RECORDS[1].to_dict().items() if k not in ("status", "cost", "examples_file", "schema")}
    (tmp_path / "old.json").write_text(json.dumps(old))
    (loaded,) = records.load_records(tmp_path)
    assert loaded.finished and loaded.cost is None and loaded.examples_path is None and loaded.schema == 0
    assert tables.summary([loaded])[("mean", "sst acc")].iloc[0] == pytest.approx(0.5)


@pytest.mark.parametrize("target", ["/proc/mtlbench-x.json", "/proc/mtlbench-dir/x.json"])
def test_every_write_that_fails_is_one_line_naming_its_path(target):
    """bench.files.atomic, which records, examples, tables, plots, checkpoints, baselines and
    predictions are written through: an unwritable place is a UserError naming the path."""
    from pathlib import Path

    with pytest.raises(UserError, match=rf"^{target}: cannot write \("):
        files.write_json_atomic(Path(target), {"a": 1})
    with pytest.raises(UserError, match=rf"^{target}: cannot write \("), files.atomic(Path(target)) as temporary:
        temporary.write_text("never")


def test_a_failed_serialiser_leaves_nothing_behind(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(UserError, match="x.bin: cannot write \\(File too large\\)"), files.atomic(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("Error while serializing: I/O error: File too large (os error 27)")
    assert list(tmp_path.iterdir()) == []


def _with_examples(tmp_path, recipe, index, seed, correct):
    """A record of sst and sts whose sst predictions are right on the first `correct` of 200 rows."""
    import numpy as np
    from mtlbench.bench import examples

    golds = [i % 5 for i in range(200)]
    sst = [g if i < correct else (g + 1) % 5 for i, g in enumerate(golds)]
    sts_gold = np.linspace(0, 5, 200)
    base = record(recipe, index, seed, correct / 200, 0.7, 1000.0).to_dict()
    base["config"] = {"tasks": {"sst": {"kind": "single_classification", "labels": list("01234")},
                                "sts": {"kind": "pair_regression", "labels": []}}}
    path = tmp_path / f"{recipe}-seed{seed}.json"
    examples.write(examples.path_for(path), {"last": {"sst": (sst, golds),
                                                       "sts": (list(sts_gold + np.cos(np.arange(200))), list(sts_gold))}})
    base["examples_file"] = examples.path_for(path).name
    RunRecord.from_dict(base).write(path)


@pytest.mark.parametrize("seeds", [1, 2, 3])
def test_markers_need_three_paired_seeds(tmp_path, seeds):
    """b is right on 180 of 200 rows where the baseline a is right on 100: p < 0.05 at any count of
    seeds, but a marker from fewer than 3 would not see how much a seed alone moves a score."""
    for seed in range(seeds):
        _with_examples(tmp_path, "a", 0, seed, 100)
        _with_examples(tmp_path, "b", 1, seed, 180)
    table = tables.summary(records.load_records(tmp_path))
    b_row = next(line for line in tables.markdown(table).splitlines() if line.startswith("| b "))
    assert ("▲" in b_row) == (seeds >= 3)
    assert ("no 95 % intervals and no ▲ / ▼" in tables.markdown(table)) == (seeds < 3)


# What a compiled table may use: booktabs rules, and amssymb's triangles and plain math in cells.
TEX_MACROS = {"begin", "end", "toprule", "midrule", "bottomrule", "pm", "blacktriangle", "blacktriangledown",
              "Delta", "times", "%", "&", "_", "#", "$", "{", "}", "textbackslash", "textasciitilde",
              "textasciicircum", "\\"}


def _checked_tex(text: str) -> list[list[str]]:
    """The tabular's rows as cells, after checking it parses as LaTeX, is ASCII, and uses only the
    macros above (a LaTeX parser, pylatexenc, in place of an engine CI does not have)."""
    from pylatexenc.latexwalker import LatexMacroNode, LatexWalker

    assert text.isascii(), [c for c in text if not c.isascii()]
    nodes, _, _ = LatexWalker(text, tolerant_parsing=False).get_latex_nodes()

    def macros(found):
        for node in found or []:
            if isinstance(node, LatexMacroNode):
                yield node.macroname
            for child in ("nodelist",):
                yield from macros(getattr(node, child, None))
    assert set(macros(nodes)) <= TEX_MACROS, set(macros(nodes)) - TEX_MACROS
    body = text[text.index("\\toprule") + len("\\toprule"):text.index("\\bottomrule")].replace("\\midrule", "")
    return [[c.strip() for c in row.split(" & ")] for row in body.split("\\\\") if row.strip()]


def test_the_latex_table_is_ascii_latex_with_one_header_row(tmp_path):
    for seed in range(3):  # significance markers and intervals from 3 seeds
        _with_examples(tmp_path, "a", 0, seed, 100)
        _with_examples(tmp_path, "b", 1, seed, 180 + seed)
    tex = tables.latex(tables.summary(records.load_records(tmp_path)))
    rows = _checked_tex(tex)
    assert rows[0][:3] == ["recipe", "sst acc", "sts r"] and len({len(r) for r in rows}) == 1  # one header row
    assert rows[2][:2] == ["b", "0.905 $\\pm$ 0.005 [0.893, 0.917] $\\blacktriangle$"]  # 0.005 x 2.484
    one_seed = tables.latex(tables.summary(RECORDS))
    assert _checked_tex(one_seed)[1][1] == "0.600 $\\pm$ 0.141" and one_seed.rstrip().splitlines()[-1].startswith(
        "% 1 seed: no 95 \\% intervals")
    assert tables.tex_cell("Δm % a_b –") == "$\\Delta$m \\% a\\_b --"


def _figure_texts(monkeypatch, records_, tmp_path) -> dict[str, list[str]]:
    """Every text each plot draws (titles, notes, labels), captured as it is saved."""
    from mtlbench.bench import plots

    texts = {}

    def keep(fig, path):
        texts[path.name] = [t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text"))]
        return path

    monkeypatch.setattr(plots, "_save", keep)
    plots.write_plots(records_, tmp_path)
    return texts


def test_plots_say_what_one_seed_cannot_show_and_what_they_leave_out(monkeypatch, tmp_path):
    single = record("single_sst", 2, 0, 0.8, 0.0, 900.0, 0.9).to_dict()
    single.update(tasks=["sst"], config={"suite": {"tasks": ["sst", "sts"]}}, overall=None, overall_best=None)
    one_seed = [record("a", 0, 0, 0.5, 0.8, 1000.0, 1.0), record("b", 1, 0, 0.6, 0.7, 500.0, 2.1),
                RunRecord.from_dict(single)]
    texts = _figure_texts(monkeypatch, one_seed, tmp_path)
    assert "s: quality vs cost (overall: one seed each, no spread; cost: 95 % interval over its rounds)" \
        in texts["quality_vs_cost.png"]
    assert "not shown (no overall over every task): single_sst" in texts["quality_vs_cost.png"]
    assert any("intervals and ▲/▼ from 3 seeds" in t for t in texts["heatmap.png"])
    assert not any("[" in t and "]" in t for t in texts["heatmap.png"])  # no interval drawn
    three = [record(r, i, s, 0.5 + 0.01 * s, 0.8, 1000.0, 1.0) for i, r in enumerate("ab") for s in range(3)]
    texts = _figure_texts(monkeypatch, three, tmp_path)
    assert "s: quality vs cost (overall: mean ± std over seeds; cost: 95 % interval over its rounds)" \
        in texts["quality_vs_cost.png"]
    assert any("[95 % interval]" in t for t in texts["heatmap.png"])


def _measured(recipe, index, seed, ratios, precise=True, self_pair=False):
    """A record whose cost holds its rounds, as bench.cost writes it."""
    found = record(recipe, index, seed, 0.6, 0.7, 900.0)
    found.cost = {"ratio": 1.0 if self_pair else sorted(ratios)[len(ratios) // 2], "ratios": ratios,
                  "precise": precise, **({"self_ratio": sorted(ratios)[len(ratios) // 2]} if self_pair else {})}
    return found


def test_cost_pools_every_seeds_rounds_into_a_median_with_its_interval():
    """Two seeds of 5 rounds: the median of the 10 ratios and its 95 % interval (the 2nd and 9th)."""
    runs = [_measured("base", 0, 0, [1.0] * 6, self_pair=True),
            _measured("m", 1, 0, [1.10, 1.12, 1.08, 1.11, 1.09]), _measured("m", 1, 1, [1.13, 1.07, 1.10, 1.14, 1.06])]
    table = tables.summary(runs)
    assert table[("mean", "cost x")].tolist() == pytest.approx([1.0, 1.10])
    assert table[("ci_low", "cost x")].tolist() == pytest.approx([1.0, 1.07])
    assert table[("ci_high", "cost x")].tolist() == pytest.approx([1.0, 1.13])
    md = tables.markdown(table)
    assert "| 1.10 [1.07, 1.13] " in md and "| 1.00 " in md and "unreliable" not in md and "cost x ?" not in md


def test_an_imprecise_cost_is_marked_and_a_self_pair_off_one_makes_the_column_unreliable():
    runs = [_measured("base", 0, 0, [1.09, 1.10, 1.08, 1.11, 1.10, 1.09], self_pair=True),
            _measured("m", 1, 0, [0.9, 1.4, 1.1, 1.3, 1.0, 1.2], precise=False)]
    table = tables.summary(runs)
    md = tables.markdown(table)
    assert "| 1.15 [0.90, 1.40] ? " in md
    assert "cost x ?: its interval is wider than the target" in md
    assert "cost x unreliable: the baseline recipe paired with itself measured 1.095 [1.080, 1.110], not 1" in md
    # the notes under the LaTeX table too, as a comment
    assert any(line.startswith("% ") and "cost x unreliable" in line for line in tables.latex(table).splitlines())
    # within its interval and the 3 % target: a self-pair of 1.02 is fine
    fine = [_measured("base", 0, 0, [1.01, 1.02, 1.03, 1.02, 1.01, 1.03], self_pair=True)]
    assert tables.cost_self_check(tables.summary(fine)) is None
