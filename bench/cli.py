"""`mtlbench` command line: run, tune, list, table, plot, data, baseline, check."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from datetime import datetime
from pathlib import Path

from mtlbench.bench import executors
from mtlbench.bench.executors.base import RunsLost
from mtlbench.bench.settings import MAX_SEEDS, PRECISIONS, TINY
from mtlbench.bench.suites import find_suite
from mtlbench.tasks.errors import UserError, counted, nearest
from mtlbench.tasks.source_types import SOURCES


def _check_run_arguments(args) -> None:
    """Command-line values, blamed on their option rather than on the suite file."""

    for option in ("seeds", "epochs", "jobs", "threads"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise UserError(f"--{option}: must be at least 1, got {value}")
    if args.seeds is not None and args.seeds > MAX_SEEDS:
        raise UserError(f"--seeds: {args.seeds} is more than the {MAX_SEEDS:,} seeds a suite may run")
    if args.max_unknown is not None and not 0 <= args.max_unknown <= 1:
        raise UserError(f"--max-unknown: a share from 0 to 1, got {args.max_unknown}")
    if args.precision is not None and args.precision not in PRECISIONS:
        raise UserError(f"--precision: unknown precision '{args.precision}'{nearest(args.precision, PRECISIONS)}; "
                        f"precisions: {', '.join(PRECISIONS)}")
    if args.data is not None and args.data not in SOURCES:
        raise UserError(f"--data: unknown source '{args.data}'{nearest(args.data, SOURCES)}; "
                        f"sources: {', '.join(SOURCES)}")
    if args.model is not None and args.model != "tiny" and ("/" in args.model or args.model.startswith(".")):
        model = Path(args.model)
        looks_local = model.is_absolute() or args.model.startswith(".") or model.exists()
        if looks_local and not model.is_dir():
            raise UserError(f"--model {args.model}: no such directory")
        if looks_local and not any(model.iterdir()):
            raise UserError(f"--model {args.model}: the directory is empty (expected a saved model: config.json, "
                            "weights, tokenizer files)")
    if args.model not in (None, TINY) and not Path(args.model).is_dir():
        from mtlbench.bench import hub

        if hub.hub_unreachable() and not hub.model_cached(args.model):
            raise UserError(f"--model {args.model}: not a local folder, not in the Hugging Face cache, and the hub "
                            f"cannot be reached (offline); give a folder with a saved model, or '{TINY}'")


def _shard(value: str | None) -> tuple[int, int]:
    """`--shard I/N` as (I, N)."""
    if value is None:
        return 0, 1
    index, _, count = value.partition("/")
    try:
        return int(index), int(count)  # the range is the Runner's to check (the API's path too)
    except ValueError:
        raise UserError(f"--shard {value}: expected I/N, e.g. 0/4 for the first of four shards") from None


def _reporting_to(suite, value: str):
    """The suite with --report-to's trackers instead of its [tracking] report_to."""
    from mtlbench.bench.settings import TrackingSettings

    names = [name.strip() for name in value.split(",") if name.strip()]
    try:
        tracking = TrackingSettings(report_to=names, log_every=suite.tracking.log_every)
    except ValueError as error:
        raise UserError(f"--report-to {value}: {error}") from None
    return dataclasses.replace(suite, tracking=tracking)


def _run(args) -> int:
    _check_run_arguments(args)
    find_suite(args.suite)  # a typo answered before the heavy imports below
    from mtlbench.bench import api, tables

    overrides = {"model": args.model, "data": args.data, "data_dir": args.data_dir, "seeds": args.seeds,
                 "max_unknown": args.max_unknown,
                 "epochs": args.epochs, "threads": args.threads, "precision": args.precision}
    suite = api.load_suite(args.suite, **overrides)
    if args.recipes:
        suite = suite.with_recipes([r.strip() for r in args.recipes.split(",") if r.strip()])
    if args.report_to is not None:
        suite = _reporting_to(suite, args.report_to)
    if args.tuned:
        suite = _tuned(suite, Path(args.tuned), args.storage)
    elif args.storage:
        raise UserError("--storage: give it with --tuned DIR (where the studies are), or to `mtlbench tune`")
    if args.out is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("under torchrun / accelerate launch, give --out: every process must find the same "
                        "directory (the default is named after the time)")
    out = Path(args.out or Path("runs") / f"{suite.name}-{datetime.now():%Y%m%d-%H%M%S}")
    records = api.run(suite, out=out, jobs=args.jobs, fresh=args.fresh, progress=not args.no_progress,
                      predictions=args.predictions, log=lambda m: print(m, file=sys.stderr),
                      executor=args.executor, address=args.address, shard=_shard(args.shard))
    if int(os.environ.get("RANK", "0")) != 0:  # data parallel: rank 0 reports
        return 0
    print(tables.markdown(tables.summary(records)))
    plots = ", ".join(sorted(p.name for p in out.glob("*.png")))
    print(f"\n{out}: table.md, table.csv, table.tex, {plots} over {len(records)} records", file=sys.stderr)
    return 0


def _tuned(suite, directory: Path, storage: str | None):
    """The suite with each recipe's best settings from the studies `mtlbench tune` left in `directory`."""
    from mtlbench.bench import tuning

    if storage is None and not (directory / tuning.FOLDER / tuning.DEFAULT_STORAGE).is_file():
        raise UserError(f"--tuned {directory}: no {tuning.FOLDER}/{tuning.DEFAULT_STORAGE} there (the output folder "
                        "of `mtlbench tune`); give --storage URL if the studies are in a database")
    return tuning.tuned_suite(suite, tuning.settings_of(suite), tuning.storage_url(directory, storage))


def _tune(args) -> int:
    _check_run_arguments(args)
    find_suite(args.suite)  # a typo answered before the heavy imports below
    from mtlbench.bench import api, tables, tune_runner, verdict

    if args.trials is not None and args.trials < 1:
        raise UserError(f"--trials: must be at least 1, got {args.trials}")
    overrides = {"model": args.model, "data": args.data, "data_dir": args.data_dir, "seeds": args.seeds,
                 "max_unknown": args.max_unknown,
                 "epochs": args.epochs, "threads": args.threads, "precision": args.precision}
    suite = api.load_suite(args.suite, **overrides)
    if args.recipes:
        suite = suite.with_recipes([r.strip() for r in args.recipes.split(",") if r.strip()])
    out = Path(args.out or Path("runs") / f"{suite.name}-tuned-{datetime.now():%Y%m%d-%H%M%S}")
    records = tune_runner.tune(suite, out, args.trials, args.storage, args.jobs, args.executor, args.address,
                               final=not args.no_final, log=lambda m: print(m, file=sys.stderr),
                               progress=not args.no_progress)
    if records:
        print(tables.markdown(tables.summary(records)))
        print("\n" + verdict.markdown(verdict.verdicts(records)))
    print(f"\n{out}: studies and trials under {out / 'tune'}"
          + (", tuned runs, table.md (with the verdict)" if records else ""), file=sys.stderr)
    return 0


def _list(args) -> int:
    from mtlbench.bench import config
    from mtlbench.strategies import registry
    from mtlbench.tasks import registry as task_registry
    from mtlbench.tasks.spec import KINDS

    if args.suite:
        return _list_suite(config.load_suite(args.suite))
    headings = {"sampler": "samplers", "combiner": "combiners", "regularizer": "regularizers",
                "freezing": "freezing schedules"}
    for axis in registry.AXES:
        print(f"{headings.get(axis, axis)}:")
        entries = registry.available(axis)
        if not entries:
            print("  (none yet)")
        for name, cls in entries.items():
            print(f"  {name:<16} {registry.describe(cls)}")
    print("suites (their recipes: mtlbench list SUITE):")
    for name in config.suite_names():
        suite = config.load_suite(name)
        print(f"  {name:<16} {counted(len(suite.recipes), 'recipe')}; {suite.description}")
    print("tasks:")
    for name, spec in task_registry.builtin().items():
        print(f"  {name:<16} {spec.kind.value:<22} sources: {', '.join(spec.sources):<24} "
              f"metric: {spec.primary_metric:<9} {spec.description}")
    print("task kinds:")
    for kind, info in KINDS.items():
        print(f"  {kind.value:<22} {info.description}; metrics: {', '.join(info.metrics)}")
    print("data sources (--data):")
    for name, source in SOURCES.items():
        print(f"  {name:<16} {source.summary}; keys: {', '.join(source.keys)}")
    print("executors (--executor):")
    for name, summary in executors.describe().items():
        print(f"  {name:<16} {summary}")
    return 0


def _list_suite(suite) -> int:
    """One suite: where it comes from, what it runs, and each recipe's choice per axis."""
    print(f"suite {suite.name} ({suite.source}): {suite.description}")
    print(f"  tasks {', '.join(suite.tasks)}; data {suite.data}; model {suite.model}; "
          f"{counted(len(suite.seeds), 'seed')}; {suite.train.epochs} epochs; baseline "
          f"{suite.baseline.name if suite.baseline else '-'}")
    print("recipes:")
    for recipe in suite.recipes:
        chosen = {axis: value for axis, value in recipe.names().items() if value not in (None, [], "none")}
        print(f"  {recipe.name:<22} " + ", ".join(
            f"{axis} {'+'.join(value) if isinstance(value, list) else value}" for axis, value in chosen.items()))
    return 0


def _table(args) -> int:
    from mtlbench.bench import records, tables

    runs = records.load_directories([Path(d) for d in args.dirs])
    table = tables.summary(runs, args.select)
    print({"md": tables.markdown, "csv": tables.csv, "latex": tables.latex}[args.format](table))
    if args.verdict:
        from mtlbench.bench import verdict

        print("\n" + verdict.markdown(verdict.verdicts(runs, args.select)))
    if args.write:
        from mtlbench.bench import verdict

        tables.write_tables(runs, Path(args.dirs[0]), args.select, appendix=verdict.section(runs, args.select))
    return 0


def _plot(args) -> int:
    from mtlbench.bench import plots, records

    for path in plots.write_plots(records.load_records(Path(args.dir)), Path(args.dir), args.select):
        print(path)
    return 0


def _baseline(args) -> int:
    from mtlbench.bench import gate, records
    from mtlbench.bench.files import write_json_atomic

    output = Path(args.output)
    if output.exists() and not args.force:
        raise UserError(f"{output}: exists; a baseline is replaced on purpose only: --force (a committed baseline "
                        f"is what CI checks against)")
    baseline = gate.make_baseline(records.load_records(Path(args.results)), args.select)
    write_json_atomic(output, baseline)
    print(f"{args.output}: baseline of suite '{baseline['suite']}', {len(baseline['recipes'])} recipes, "
          f"{baseline['records']} runs", file=sys.stderr)
    return 0


def _check(args) -> int:
    import os

    from mtlbench.bench import gate, records
    from mtlbench.bench.files import cannot_write, write_text_atomic

    baseline_path = Path(args.baseline)
    baseline = gate.load_baseline(baseline_path)
    result = gate.check(records.load_records(Path(args.results)), baseline, baseline_path,
                        True if args.allow_missing else None)
    text = gate.markdown(result, baseline_path)
    print(text, end="")
    verdict = 1 if result.failed else 0
    junit = Path(args.junit) if args.junit else Path(args.results) / "check.xml"
    try:
        write_text_atomic(junit, gate.junit_xml(result))
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            try:
                with open(summary, "a", encoding="utf-8") as handle:
                    handle.write(text + "\n")
            except OSError as error:
                raise cannot_write(Path(summary), error) from None
    except UserError as error:  # the verdict stands; a regression still exits 1, a pass exits 2
        print(f"mtlbench: error: {error} (the verdict above stands; --junit PATH writes the report elsewhere)",
              file=sys.stderr)
        return verdict or 2
    return verdict


def _data(args) -> int:
    from mtlbench.bench import backbone, data_quality
    from mtlbench.tasks import registry as task_registry
    from mtlbench.tasks.sources import load_task

    if args.tasks:
        references = [t.strip() for t in args.tasks.split(",") if t.strip()]
    else:
        references = [n for n, spec in task_registry.builtin().items() if args.data in spec.sources]
    loaded = {}
    for reference in references:
        spec = task_registry.find(reference, Path.cwd())
        loaded[spec.name] = load_task(args.data, spec, args.data_dir)
    backbone.quiet_transformers()
    path = backbone.resolve(args.model, backbone.TinyEncoderConfig(), lambda m: print(m, file=sys.stderr))
    tokenizer = backbone.load_tokenizer(path)
    max_length = min(args.max_length, backbone.max_positions(path, tokenizer))
    quality = {t: data_quality.measure_task(d.rows, tokenizer, max_length) for t, d in loaded.items()}
    print(f"model {args.model}, max_length {max_length}: 'unknown' is the share of tokens its tokenizer does not "
          f"know, 'cut' of rows longer than max_length, 'in train' of rows whose text train has too")
    print(f"{'task':<10} {'source':<10} {'split':<6} {'loaded':>8} {'skipped':>8} {'unknown':>8} {'cut':>6} "
          f"{'in train':>9}  reasons")
    for task, data in loaded.items():
        for split, rows in data.rows.items():
            reasons, q = data.skipped.get(split, {}), quality[task][split]
            detail = ", ".join(f"{n} {r}" for r, n in reasons.items()) or "-"
            unknown = "-" if q["unknown_share"] is None else f"{q['unknown_share']:.1%}"
            shared = "-" if q["in_train"] is None else f"{q['in_train']}"
            print(f"{task:<10} {data.source:<10} {split:<6} {len(rows):>8} {sum(reasons.values()):>8} {unknown:>8} "
                  f"{q['truncated_share']:>6.1%} {shared:>9}  {detail}")
        if data.labels:
            print(f"{'':<10} labels ({data.label_origin}): {', '.join(data.labels)}")
    for line in data_quality.warnings(quality, max_length):
        print(f"mtlbench: warning: {line}", file=sys.stderr)
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mtlbench")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="mtlbench", description="Benchmark multi-task fine-tuning strategies.")
    main.add_argument("--version", action="version", version=f"mtlbench {_version()}")
    sub = main.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    _tune_parser(sub)
    listing = sub.add_parser("list", help="list strategies, suites and tasks; with a suite, its recipes")
    listing.add_argument("suite", nargs="?", help="a suite's name or file: its recipes")
    listing.set_defaults(handler=_list)
    _records_parsers(sub)
    data = sub.add_parser("data", help="rows loaded and skipped (with reasons), unknown tokens, rows cut and rows "
                          "also in train, per task and split")
    data.add_argument("--data", default="synthetic", help=f"which source: {', '.join(SOURCES)}")
    data.add_argument("--data-dir")
    data.add_argument("--tasks", help="comma-separated task names or task .toml paths (default: every built-in "
                      "task with that source)")
    data.add_argument("--model", default=TINY, help="whose tokenizer measures the text (default: the tiny encoder)")
    data.add_argument("--max-length", type=int, default=128, help="the suite's max_length (default 128)")
    data.set_defaults(handler=_data)
    return main


def _run_parser(sub) -> None:
    run = sub.add_parser("run", help="train a suite's recipes side by side and print the comparison table")
    run.add_argument("suite", nargs="?", default="quick", help="suite name or path to a suite .toml (default: quick)")
    run.add_argument("--recipes", help="comma-separated recipe names to run (default: all)")
    run.add_argument("--seeds", type=int, help="number of seeds (0..N-1)")
    run.add_argument("--out", help="directory for records, tables and plots (default: runs/SUITE-TIME)")
    run.add_argument("--model", help="'tiny' (embedded) or a Hugging Face model name / local path")
    run.add_argument("--data", help="which of each task's sources: " + "; ".join(
        f"{name} ({source.summary})" for name, source in SOURCES.items()))
    run.add_argument("--data-dir", help="directory of the cs224n files, or of saved hf datasets")
    run.add_argument("--epochs", type=int, help="override the suite's epochs")
    run.add_argument("--max-unknown", type=float, help="refuse a task whose train tokens are more than this share "
                     "unknown to the encoder's tokenizer (default: the suite's max_unknown, 0.25)")
    run.add_argument("--jobs", type=int, help="runs side by side in worker processes (default: on CPU, one per "
                     "`threads` cores; on an accelerator, 1); results do not depend on it")
    run.add_argument("--threads", type=int, help="CPU threads per run (default: the suite's [train] threads, 1); "
                     "part of the setting, recorded")
    run.add_argument("--report-to", help="comma-separated trackers for live scalars: csv, tensorboard, mlflow, wandb "
                     "(overrides the suite's [tracking] report_to; files under OUT/tracking/)")
    run.add_argument("--precision", help="fp32, bf16 or fp16 (default: the suite's [train] precision, fp32); "
                     "part of the setting, recorded")
    run.add_argument("--executor", choices=executors.CHOICES, default=executors.LOCAL,
                     help="where the runs execute: " + "; ".join(f"{name}: {summary}"
                                                                for name, summary in executors.describe().items()))
    run.add_argument("--address", help="with --executor ray: the cluster to join ('auto', or HOST:PORT; default: "
                     "start a local Ray instance)")
    run.add_argument("--shard", metavar="I/N", help="train shard I of N of the recipe x seed grid (a job array "
                     "without Ray); `mtlbench table DIR...` merges the shards' directories")
    run.add_argument("--predictions", action="store_true", help="write each task's dev (and, with test = true, "
                     "test) predictions from its best dev epoch under OUT/predictions/RUN/")
    run.add_argument("--fresh", action="store_true", help="discard this suite's earlier records and checkpoints in "
                     "OUT and train every run again (default: finished runs are kept, unfinished ones resume)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--tuned", metavar="DIR", help="run each recipe with its best settings from the studies "
                     "`mtlbench tune` left in DIR (its records keep `tuned`)")
    run.add_argument("--storage", metavar="URL", help="with --tuned: the Optuna storage the studies are in "
                     "(default: DIR/tune/study.db)")
    run.set_defaults(handler=_run)


def _tune_parser(sub) -> None:
    tune = sub.add_parser("tune", help="tune every recipe at an equal budget (validation held out of train), "
                          "then run each with its best settings and print the table with its verdict")
    tune.add_argument("suite", help="suite name or path to a suite .toml ([tune] declares the search space)")
    tune.add_argument("--trials", type=int, help="trials per recipe, the baseline's too (default: [tune] trials, 8)")
    tune.add_argument("--storage", metavar="URL", help="an Optuna storage URL (sqlite:///..., postgresql://...) "
                      "several machines share (default: OUT/tune/study.db)")
    tune.add_argument("--out", help="output folder (default: runs/SUITE-tuned-TIME)")
    for option, text in (("--recipes", "comma-separated recipe names (default: all)"),
                         ("--model", "as for run"), ("--data", "as for run"),
                         ("--data-dir", "as for run"), ("--precision", "as for run"), ("--address", "as for run")):
        tune.add_argument(option, help=text)
    tune.add_argument("--max-unknown", type=float, help="as for run")
    for option in ("--seeds", "--epochs", "--threads", "--jobs"):
        tune.add_argument(option, type=int, help="as for run (--seeds: of the final runs; --jobs: tuning processes "
                          "sharing the studies)")
    tune.add_argument("--executor", choices=(executors.LOCAL, "ray"), default=executors.LOCAL,
                      help="local (this process, or --jobs N processes) or ray (trials as Ray tasks)")
    tune.add_argument("--no-final", action="store_true", help="tune only; `mtlbench run SUITE --tuned OUT` later")
    tune.add_argument("--no-progress", action="store_true", help="no progress bars")
    tune.set_defaults(handler=_tune)


def _records_parsers(sub) -> None:
    """The commands that read a directory of records: table, plot, baseline, check."""
    table = sub.add_parser("table", help="re-render the comparison table from a directory of records")
    table.add_argument("dirs", nargs="+", metavar="DIR", help="directories of records (several: the shards "
                       "of one suite, or suites to compare, merged into one table)")
    table.add_argument("--format", choices=("md", "csv", "latex"), default="md")
    table.add_argument("--select", choices=("last", "best", "test"), default="last",
                       help="last epoch; each task's best dev epoch (optimistic: chosen on dev); or the test "
                       "scores at each task's best dev epoch (suites with test = true)")
    table.add_argument("--write", action="store_true", help="also rewrite table.md/.csv/.tex in the first DIR")
    table.add_argument("--verdict", action="store_true", help="also each recipe's verdict against the baseline: "
                       "per-task differences with 95 %% intervals, Holm-corrected p, inside the scalarisation front "
                       "or not (docs/fair-comparison.md)")
    table.set_defaults(handler=_table)

    plot = sub.add_parser("plot", help="re-render the plots from a directory of records")
    plot.add_argument("dir")
    plot.add_argument("--select", choices=("last", "best"), default="last")
    plot.set_defaults(handler=_plot)

    baseline = sub.add_parser("baseline", help="write a baseline of a results directory, for `check`")
    baseline.add_argument("results", help="directory of run records")
    baseline.add_argument("-o", "--output", required=True, help="baseline file to write (commit it under results/)")
    baseline.add_argument("--select", choices=("last", "best"), default="last")
    baseline.add_argument("--force", action="store_true", help="replace an existing baseline file")
    baseline.set_defaults(handler=_baseline)

    gate_check = sub.add_parser("check", help="compare results with a baseline; exit 1 on a regression")
    gate_check.add_argument("results", help="directory of run records")
    gate_check.add_argument("--baseline", required=True, help="a file written by `mtlbench baseline`")
    gate_check.add_argument("--junit", help="JUnit XML report (default: RESULTS/check.xml)")
    gate_check.add_argument("--allow-missing", action="store_true",
                            help="a recipe, task or seed of the baseline missing from the results does not fail")
    gate_check.set_defaults(handler=_check)


def _stop_on_signal(signum, frame):
    raise KeyboardInterrupt  # a scheduler's SIGTERM, a closed terminal's SIGHUP: stop as Ctrl-C does, cleanly


STOPPING_SIGNALS = ("SIGTERM", "SIGHUP")  # SIGINT is Python's KeyboardInterrupt already


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    args = parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = {name: signal.signal(getattr(signal, name), _stop_on_signal)
                for name in STOPPING_SIGNALS if hasattr(signal, name)} if main_thread else {}
    try:
        return args.handler(args)
    except UserError as error:
        print(f"mtlbench: error: {error}", file=sys.stderr)
        return 2
    except RunsLost as lost:  # the other runs landed and were rendered
        print(f"mtlbench: {lost}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone says it
            print(f"mtlbench: interrupted{': ' + str(interrupt) if str(interrupt) else ''}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mtlbench list | head -1`: the reader has gone; not an error
        # Python would complain again flushing stdout at exit; point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


if __name__ == "__main__":
    sys.exit(main())
