"""Data parallelism for one run: `torchrun --nproc-per-node N -m bench.cli run ...` (or `accelerate
launch`) starts N processes that train the same run together.

Every rank draws the same global batches (same seed, same sampler); each takes a contiguous shard
of every task's batch. The gradients are averaged over the ranks *per task*, before a combiner
forms its Gramian (see bench.precision.StepPipeline), so every combiner computes on the global
per-task gradients and every rank applies the same update. Evaluation is sharded the same way and
the predictions gathered, so every rank holds the same metrics; only rank 0 writes files.

A rank's loss is the mean over its shard; times N * share (share = its rows / the batch's rows),
the ranks' average is the mean over the whole batch, exactly, whether or not the batch divides
evenly. A rank whose shard would be empty (a last batch smaller than N) runs one row with share 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place among the run's processes; one process: rank 0 of 1, no collectives."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def writes(self) -> bool:
        """Whether this process writes records, checkpoints and tables (rank 0 only)."""
        return self.rank == 0

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over the ranks, in place (one collective)."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, value) -> list:
        """Every rank's `value` (any picklable object), in rank order."""
        if not self.active:
            return [value]
        found = [None] * self.world
        dist.all_gather_object(found, value)
        return found

    def broadcast(self, value):
        """Rank 0's `value`, on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def bounds(self, rows: int) -> tuple[int, int]:
        """This rank's contiguous slice [lo, hi) of `rows` rows."""
        return rows * self.rank // self.world, rows * (self.rank + 1) // self.world

    def shard(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float]:
        """This rank's rows of a collated batch, and its share of them. A bi-encoder pair batch
        holds 2B rows (side A, then side B): each side is sliced alike."""
        if not self.active:
            return batch, 1.0
        rows = batch["labels"].shape[0]
        lo, hi = self.bounds(rows)
        share = (hi - lo) / rows
        if hi == lo:  # nothing left for this rank: one row that counts for nothing
            lo, hi = 0, 1
        local = {}
        for key, value in batch.items():
            if value.shape[0] == rows:
                local[key] = value[lo:hi]
            elif value.shape[0] == 2 * rows:
                local[key] = torch.cat([value[lo:hi], value[rows + lo:rows + hi]])
            else:
                raise ValueError(f"batch['{key}'] has {value.shape[0]} rows for {rows} examples")
        return local, share

    def parameters_from_rank0(self, module: torch.nn.Module) -> None:
        """Every rank starts from rank 0's weights (they should agree already: same seed)."""
        if self.active:
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)


SINGLE = Ranks()


def from_environment(device_type: str = "cpu") -> Ranks:
    """The ranks torchrun / accelerate launch describe in the environment (RANK, WORLD_SIZE,
    MASTER_ADDR, ...); joins the process group on first call. One process: `SINGLE`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    if not dist.is_initialized():
        if device_type == "cuda":  # NCCL's collectives run on the current device: this rank's own
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())


def local_device(ranks: Ranks, device: torch.device) -> torch.device:
    """On CUDA, each rank takes the GPU of its local rank."""
    if ranks.active and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", ranks.rank)))
    return device
