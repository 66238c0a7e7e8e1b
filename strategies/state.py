"""A strategy's training state for checkpoints: whatever changes while it trains (generators,
statistics, learned weights, a combiner's own optimizer), captured from its attributes so that a
new strategy is checkpointed without writing code. Only tensors, numbers, strings, lists, tuples and
dicts come out, so the state loads with `torch.load(weights_only=True)`: no pickled objects."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from torch import nn

_SKIP = object()
# Set at construction from the recipe and the model, never changed by training.
NOT_STATE = frozenset({"options", "model", "tasks", "step_inputs", "latest"})  # step_inputs: this step's only


def capture(value):
    """`value` as plain data, or _SKIP for what is not state (functions, compiled expressions)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, torch.Generator):
        return {"__generator__": value.get_state()}
    if isinstance(value, random.Random):
        return {"__random__": value.getstate()}
    if isinstance(value, nn.Module):
        return {"__module__": {k: v.detach().cpu().clone() for k, v in value.state_dict().items()}}
    if isinstance(value, torch.optim.Optimizer):
        return {"__optimizer__": value.state_dict()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [capture(v) for v in value]
        return _SKIP if any(v is _SKIP for v in items) else type(value)(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        items = {k: capture(v) for k, v in value.items()}
        return _SKIP if any(v is _SKIP for v in items.values()) else items
    if type(value).__module__.startswith("mtlbench.strategies") and hasattr(value, "__dict__"):  # e.g. WindowMeans
        return {"__object__": attributes(value)}
    return _SKIP


def attributes(owner, exclude=frozenset()) -> dict:
    return {k: state for k, v in vars(owner).items() if k not in exclude and (state := capture(v)) is not _SKIP}


def restore(current, saved, device: torch.device):
    """`saved` put back into `current` in place where it has identity (a parameter an optimizer
    holds, a generator); tensors without a current counterpart go to `device`."""
    if isinstance(saved, dict) and len(saved) == 1:
        (tag, inner), = saved.items()
        actions: dict[str, Callable] = {
            "__generator__": lambda: current.set_state(inner),
            "__random__": lambda: current.setstate(_as_tuples(inner)),
            "__module__": lambda: current.load_state_dict(inner),
            "__optimizer__": lambda: current.load_state_dict(inner),
            "__object__": lambda: restore_attributes(current, inner, device),
        }
        if tag in actions:
            actions[tag]()
            return current
    if isinstance(saved, torch.Tensor):
        if isinstance(current, torch.Tensor) and current.shape == saved.shape and current.dtype == saved.dtype:
            with torch.no_grad():
                current.copy_(saved)
            return current
        return saved.to(device)
    if isinstance(saved, dict):
        return {k: restore(current.get(k) if isinstance(current, dict) else None, v, device) for k, v in saved.items()}
    if isinstance(saved, (list, tuple)):
        olds = current if isinstance(current, (list, tuple)) and len(current) == len(saved) else [None] * len(saved)
        items = [restore(o, v, device) for o, v in zip(olds, saved)]
        return tuple(items) if isinstance(saved, tuple) else items
    return saved


def restore_attributes(owner, saved: dict, device: torch.device) -> None:
    for key, value in saved.items():
        setattr(owner, key, restore(getattr(owner, key, None), value, device))


def _as_tuples(value):
    """random.Random.setstate wants tuples all the way down."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
