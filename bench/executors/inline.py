"""One run at a time, in this process: the simplest executor, and the one a suite whose strategy
was registered at run time (a notebook cell) must use."""

from __future__ import annotations

from mtlbench.bench.executors.base import Executor, Landed, Todo


class InlineExecutor(Executor):
    name = "inline"
    summary = "one run at a time in this process"

    def run(self, todo: Todo, landed: Landed) -> list[str]:
        from mtlbench.bench.progress import shown
        from mtlbench.bench.single_run import run_one

        context = self.context
        with shown(context, len(todo), slots=0) as progress:  # slots=0: the trainer draws each run's bar
            if progress is not None:
                context.on_step = lambda recipe, seed, step, total: progress.step((recipe.position, seed), step, total)
            try:
                for n, (recipe, seed) in enumerate(todo, 1):
                    context.log(f"[{n}/{len(todo)}] {recipe.name} seed {seed}")
                    if progress is not None:
                        progress.start((recipe.position, seed), f"{recipe.name} seed {seed}")
                    landed(run_one(context, recipe, seed), head="     ")
                    if progress is not None:
                        progress.end((recipe.position, seed))
            finally:
                context.on_step = None
        return []  # a fault of this process ends the command itself
