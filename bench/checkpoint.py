"""Epoch checkpoints of one run, written atomically under OUT/checkpoints/RUN/epoch-NNNN/:
`model.safetensors` (the weights) and `state.pt` (optimizer, LR schedule, every random generator,
the task streams' positions, each strategy's state and the history so far). `state.pt` holds only
tensors, numbers, strings and containers, and is read with `torch.load(weights_only=True)`: loading
a checkpoint never unpickles objects.

`manifest.json`, written last, holds each file's size and SHA-256. Loading verifies it, then reads
the state and the weights; anything wrong (a truncated or altered file, weights of another
architecture) raises `BrokenCheckpoint` naming the checkpoint, and `set_aside` moves it out of the
way (`broken-epoch-NNNN`), so the run resumes from the epoch before, or starts afresh."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from mtlbench.bench.files import atomic
from safetensors.torch import load_model, save_model

DIRECTORY = "checkpoints"
_PREFIX = "epoch-"


def run_directory(out_dir: Path, stem: str) -> Path:
    return Path(out_dir) / DIRECTORY / stem


MANIFEST = "manifest.json"
FILES = ("model.safetensors", "state.pt")


class BrokenCheckpoint(Exception):
    """A checkpoint that cannot be resumed from; the message says which and why."""


def _digest(path: Path) -> dict:
    with open(path, "rb") as handle:
        return {"bytes": path.stat().st_size, "sha256": hashlib.file_digest(handle, "sha256").hexdigest()}


def save(directory: Path, epoch: int, model: torch.nn.Module, state: dict) -> Path:
    """Write epoch `epoch`'s checkpoint into a temporary folder beside its place, then rename it:
    a checkpoint folder that exists is complete, and its manifest says what complete is."""
    final = directory / f"{_PREFIX}{epoch:04d}"
    with atomic(final, folder=True) as temporary:
        save_model(model, str(temporary / "model.safetensors"))
        torch.save(state, temporary / "state.pt")
        manifest = {"epoch": epoch, "files": {name: _digest(temporary / name) for name in FILES}}
        (temporary / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return final


def epochs(directory: Path) -> list[int]:
    """The epochs with a complete checkpoint, in order."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name[len(_PREFIX):]) for p in directory.iterdir()
                  if p.name.startswith(_PREFIX) and p.name[len(_PREFIX):].isdigit())


def verify(path: Path) -> None:
    """The files are those the manifest lists, byte for byte (a checkpoint written before manifests
    existed is taken as it is and checked by loading alone)."""
    if not (path / MANIFEST).exists():
        return
    try:
        listed = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["files"]
        found = {name: _digest(path / name) if (path / name).is_file() else None for name in listed}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BrokenCheckpoint(f"{path}: unreadable manifest ({error})") from None
    for name, expected in listed.items():
        if found[name] != expected:
            what = "missing" if found[name] is None else "changed since it was saved (its size or checksum differs)"
            raise BrokenCheckpoint(f"{path}: {name} {what}")


def load_state(path: Path) -> dict:
    """The checkpoint's state (everything but the weights), after verifying its files."""
    verify(path)
    try:
        return torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file raises many kinds
        raise BrokenCheckpoint(f"{path}: state.pt cannot be read ({_first_line(error)})") from None


def load_weights(path: Path, model: torch.nn.Module) -> None:
    """Put the checkpoint's weights into `model` (all of them, or a BrokenCheckpoint)."""
    try:
        load_model(model, str(path / "model.safetensors"))
    except Exception as error:  # noqa: BLE001 - another architecture, a garbled header, ...
        raise BrokenCheckpoint(f"{path}: its weights do not fit the model ({_first_line(error)})") from None


def set_aside(path: Path) -> Path:
    """Move a broken checkpoint out of the epochs resumed from, keeping it for a look."""
    target, n = path.with_name(f"broken-{path.name}"), 1
    while target.exists():
        target, n = path.with_name(f"broken-{path.name}.{n}"), n + 1
    os.replace(path, target)
    return target


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def prune(directory: Path, keep: int, also: set[int] = frozenset()) -> None:
    """Remove all but the last `keep` epochs and the epochs in `also` (a temporary folder a killed
    save left is removed by the next run: bench.files.remove_stray_temporaries)."""
    found = epochs(directory)
    wanted = set(found[-keep:] if keep > 0 else []) | set(also)
    for epoch in found:
        if epoch not in wanted:
            shutil.rmtree(directory / f"{_PREFIX}{epoch:04d}", ignore_errors=True)


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
