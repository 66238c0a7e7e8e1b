"""Every name a user gives that becomes part of a path or a module name, checked in one place.

Suite and recipe names become file names (OUT/SUITE.RECIPE-seedN.json); task names become file
names (OUT/predictions/RUN/TASK-SPLIT.tsv) and module names (the task's head); a source's
`predictions.file` is a file name with `{split}` in it. None may hold a path separator, start with
a dot or a dash, or be longer than a file system takes; a task name holds no dot either."""

from __future__ import annotations

import re
from typing import Any

from mtlbench.tasks.errors import UserError

RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=,@-]{0,119}")
TASK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=,@{}-]{0,119}")


def check_name(name: Any, where: str) -> str:
    """A suite's or a recipe's name."""
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        raise UserError(f"{where}: {name!r} is not a valid name: letters, digits and _ . + = , @ -, "
                        "not starting with . or -, at most 120 characters (it becomes a file name)")
    return name


def check_task_name(name: Any, where: str) -> str:
    """A task's name: a file name and the name of the task's head module, so no dot."""
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise UserError(f"{where}: {name!r} is not a valid task name: letters, digits, '-' and '_', not "
                        "starting with '-', at most 64 characters (it names files and the task's head)")
    return name


def check_file_pattern(pattern: Any, where: str) -> str:
    """A file name to write under the output folder, with `{split}` where the split's name goes."""
    if (not isinstance(pattern, str) or not FILE_NAME.fullmatch(pattern) or pattern.count("{split}") != 1
            or pattern.replace("{split}", "").count("{") + pattern.replace("{split}", "").count("}")):
        raise UserError(f"{where}: {pattern!r} is not a file name with '{{split}}' in it (letters, digits and "
                        "_ . + = , @ -, no folder, not starting with . or -)")
    return pattern
