"""Data sources behind one interface: `load_task(source, task, ...) -> TaskData`."""

from __future__ import annotations

import difflib

from tasks import cs224n, hf, synthetic
from tasks.errors import UserError
from tasks.spec import TASKS, TaskData

SOURCES = ("synthetic", "cs224n", "hf")


def nearest(name: str, choices) -> str:
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.0)
    return f" (did you mean '{match[0]}'?)" if match else ""


def check_task(task: str) -> None:
    if task not in TASKS:
        raise UserError(f"unknown task '{task}'{nearest(task, TASKS)}; tasks: {', '.join(TASKS)}")


def load_task(source: str, task: str, data_dir=None, synthetic_config=None) -> TaskData:
    check_task(task)
    if source == "synthetic":
        return synthetic.generate(task, synthetic_config or synthetic.SyntheticConfig())
    if source == "cs224n":
        if data_dir is None:
            raise UserError("the cs224n source needs --data-dir DIR holding the CS224N csv files")
        return cs224n.load(task, data_dir)
    if source == "hf":
        return hf.load(task, data_dir)
    raise UserError(f"unknown data source '{source}'{nearest(source, SOURCES)}; sources: {', '.join(SOURCES)}")
