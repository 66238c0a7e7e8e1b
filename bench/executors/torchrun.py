"""Under `torchrun --nproc-per-node N -m bench.cli run ...` (or `accelerate launch`): every process
trains each run together, one shard of every batch (bench.parallel), one run at a time; rank 0
alone logs and writes. Chosen by itself when the launcher's environment says so."""

from __future__ import annotations

from mtlbench.bench.executors.inline import InlineExecutor
from mtlbench.tasks.errors import UserError


class TorchrunExecutor(InlineExecutor):
    name = "torchrun"
    summary = "under torchrun: every process trains each run together, one shard of each batch"

    @classmethod
    def check_arguments(cls, jobs, address, world) -> None:
        if world <= 1:
            raise UserError("--executor torchrun: start the command with torchrun (or accelerate launch), "
                            "which sets WORLD_SIZE and RANK for each process")
        if address is not None:
            raise UserError("--address: the address of a Ray cluster, for --executor ray")
        if jobs is not None and jobs > 1:
            raise UserError(f"--jobs {jobs}: under torchrun the {world} processes train one run at a time together; "
                            "leave --jobs out")
