"""The error of the whole package for bad input, and the helpers every layer names a place with.

It lives in `tasks/`, the lowest package (tasks <- strategies <- bench): every layer may import
downwards, so the one error type has to sit at the bottom. The CLI turns it into one line, exit 2."""

import difflib


class UserError(Exception):
    """Bad input from the user: a config key, a name, a data file. Never a bug in mtlbench."""


# Other libraries' names for a setting or an option, where spelling distance would suggest the wrong one.
SYNONYMS = {"learning_rate": "lr", "learningrate": "lr", "num_epochs": "epochs", "n_epochs": "epochs",
            "num_train_epochs": "epochs", "epoch": "epochs", "batchsize": "batch_size", "bs": "batch_size",
            "train_batch_size": "batch_size", "per_device_train_batch_size": "batch_size",
            "seed": "seeds", "warmup": "warmup_ratio", "warmup_steps": "warmup_ratio", "grad_clip": "max_grad_norm",
            "clip": "max_grad_norm", "max_len": "max_length", "max_seq_length": "max_length", "wd": "weight_decay",
            "loss": "combiner",
            "aggregator": "combiner", "scheduler": "sampler", "regularisers": "regularizers",
            "regularizer": "regularizers", "task": "tasks",
            # strategy options
            "eps": "epsilon", "radius": "epsilon", "temp": "temperature", "tau": "temperature"}


def nearest(name: str, choices) -> str:
    """' (did you mean 'x'?)' for a known synonym or the closest choice, or ''."""
    choices = [str(c) for c in choices]
    synonym = SYNONYMS.get(str(name).lower())
    if synonym in choices:
        return f" (did you mean '{synonym}'?)"
    match = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.0)
    return f" (did you mean '{match[0]}'?)" if match else ""


def check_keys(table, allowed, where: str) -> None:
    """`table` is a table whose keys are all in `allowed`; else an error naming the nearest."""
    if not isinstance(table, dict):
        raise UserError(f"{where}: expected a table, got {table!r}")
    for key in table:
        if key not in allowed:
            raise UserError(f"{where}: unknown key '{key}'{nearest(key, allowed)}")


def counted(number: int, noun: str) -> str:
    """'1 seed', '3 seeds'."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
