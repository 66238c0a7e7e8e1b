"""Compare two directories of run records on everything a run's result is: metrics, best epochs,
history (dev metrics and training losses per epoch), test scores, the resolved config and its hash,
the strategies' summaries, data counts, steps and examples, and the per-example dev predictions
(byte for byte). Timing, memory, cost, environment and dates are left out: they differ run to run.

    python tests/tools/same_records.py BEFORE_DIR AFTER_DIR

Prints one line per run and exits 1 if any differs (naming the first differing key)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULT_KEYS = ("schema", "run_id", "status", "suite", "recipe_name", "recipe_index", "recipe", "seed", "tasks",
               "config", "config_hash", "primary_metrics", "data", "metrics", "best", "overall", "overall_best",
               "history", "test_at_best_dev", "diverged", "strategies", "examples_file")
TRAIN_KEYS = ("examples", "steps", "steps_per_epoch", "precision", "processes", "skipped_steps", "loss_scale",
              "model_flops")
MODEL_KEYS = ("name", "parameters", "max_length", "mlm_head")


def _first_difference(old, new, path: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            found = _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            found = _first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if old == new else f"{path}: {json.dumps(old)[:80]} -> {json.dumps(new)[:80]}"


def _result(record: dict) -> dict:
    kept = {key: record.get(key) for key in RESULT_KEYS}
    kept["train"] = {key: record.get("train", {}).get(key) for key in TRAIN_KEYS}
    kept["model"] = {key: record.get("model", {}).get(key) for key in MODEL_KEYS}
    kept["key_order"] = list(record)
    return kept


def compare(before: Path, after: Path) -> int:
    old = {p.name: p for p in before.glob("*.json")}
    new = {p.name: p for p in after.glob("*.json")}
    failed = 0
    for name in sorted(set(old) | set(new)):
        if name not in old or name not in new:
            print(f"{name}: only in {'before' if name in old else 'after'}")
            failed += 1
            continue
        a, b = json.loads(old[name].read_text()), json.loads(new[name].read_text())
        difference = _first_difference(_result(a), _result(b))
        examples = a.get("examples_file")
        if difference is None and examples and (before / examples).read_bytes() != (after / examples).read_bytes():
            difference = f"{examples}: the per-example predictions differ"
        print(f"{name}: {'identical' if difference is None else 'DIFFERS ' + difference}")
        failed += difference is not None
    print(f"{len(set(old) | set(new)) - failed} identical, {failed} different")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(compare(Path(sys.argv[1]), Path(sys.argv[2])))
