"""The error of the whole package for bad input: the CLI turns it into one line and exit code 2."""

import difflib


class UserError(Exception):
    """Bad input from the user: a config key, a name, a data file. Never a bug in mtlbench."""


# Other libraries' names for a setting, where spelling distance would suggest the wrong one.
SYNONYMS = {"learning_rate": "lr", "learningrate": "lr", "num_epochs": "epochs", "n_epochs": "epochs",
            "num_train_epochs": "epochs", "epoch": "epochs", "batchsize": "batch_size", "bs": "batch_size",
            "train_batch_size": "batch_size", "per_device_train_batch_size": "batch_size",
            "seed": "seeds", "warmup": "warmup_ratio", "warmup_steps": "warmup_ratio", "grad_clip": "max_grad_norm",
            "clip": "max_grad_norm", "max_len": "max_length", "max_seq_length": "max_length", "wd": "weight_decay",
            "loss": "combiner",
            "aggregator": "combiner", "scheduler": "sampler", "regularisers": "regularizers",
            "regularizer": "regularizers", "task": "tasks"}


def nearest(name: str, choices) -> str:
    """' (did you mean 'x'?)' for a known synonym or the closest choice, or ''."""
    choices = [str(c) for c in choices]
    synonym = SYNONYMS.get(str(name).lower())
    if synonym in choices:
        return f" (did you mean '{synonym}'?)"
    match = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.0)
    return f" (did you mean '{match[0]}'?)" if match else ""
