"""Epoch checkpoints of one run, written atomically under OUT/checkpoints/RUN/epoch-NNNN/:
`model.safetensors` (the weights) and `state.pt` (optimizer, LR schedule, every random generator,
the task streams' positions, each strategy's state and the history so far). `state.pt` holds only
tensors, numbers, strings and containers, and is read with `torch.load(weights_only=True)`: loading
a checkpoint never unpickles objects."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from bench.files import umask as _umask

DIRECTORY = "checkpoints"
_PREFIX = "epoch-"


def run_directory(out_dir: Path, stem: str) -> Path:
    return Path(out_dir) / DIRECTORY / stem


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save(directory: Path, epoch: int, model: torch.nn.Module, state: dict) -> Path:
    """Write epoch `epoch`'s checkpoint into a temporary folder beside its place, then rename it:
    a checkpoint folder that exists is complete."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{_PREFIX}{epoch:04d}"
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=directory))
    try:
        save_model(model, str(temporary / "model.safetensors"))
        torch.save(state, temporary / "state.pt")
        for path in (temporary / "model.safetensors", temporary / "state.pt"):
            _fsync(path)
            path.chmod(0o666 & ~_umask())
        temporary.chmod(0o777 & ~_umask())
        if final.exists():  # re-saved after a resume that re-ran this epoch
            shutil.rmtree(final)
        os.replace(temporary, final)
        _fsync(directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return final


def epochs(directory: Path) -> list[int]:
    """The epochs with a complete checkpoint, in order."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name[len(_PREFIX):]) for p in directory.iterdir()
                  if p.name.startswith(_PREFIX) and p.name[len(_PREFIX):].isdigit())


def latest(directory: Path) -> Path | None:
    found = epochs(directory)
    return directory / f"{_PREFIX}{found[-1]:04d}" if found else None


def load(path: Path, model: torch.nn.Module) -> dict:
    """Put the checkpoint's weights into `model` and return the rest of its state."""
    load_model(model, str(path / "model.safetensors"))
    return torch.load(path / "state.pt", map_location="cpu", weights_only=True)


def prune(directory: Path, keep: int, also: set[int] = frozenset()) -> None:
    """Remove all but the last `keep` epochs and the epochs in `also`, and any temporary folder a
    killed save left."""
    found = epochs(directory)
    wanted = set(found[-keep:] if keep > 0 else []) | set(also)
    for epoch in found:
        if epoch not in wanted:
            shutil.rmtree(directory / f"{_PREFIX}{epoch:04d}", ignore_errors=True)
    for leftover in directory.glob(f".{_PREFIX}*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)


# --- the process-wide random generators -------------------------------------------------------

def global_rng_state() -> dict:
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
