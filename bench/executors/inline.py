"""One run at a time, in this process: the simplest executor, and the one a suite whose strategy
was registered at run time (a notebook cell) must use."""

from __future__ import annotations

from mtlbench.bench.executors.base import Executor, Landed, Todo


class InlineExecutor(Executor):
    name = "inline"
    summary = "one run at a time in this process"

    def run(self, todo: Todo, landed: Landed) -> list[str]:
        from mtlbench.bench.single_run import run_one

        for n, (recipe, seed) in enumerate(todo, 1):
            self.context.log(f"[{n}/{len(todo)}] {recipe.name} seed {seed}")
            landed(run_one(self.context, recipe, seed), head="     ")
        return []  # a fault of this process ends the command itself
