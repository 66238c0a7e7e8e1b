"""mtlbench's samplers, combiners, regularisers and freezing schedules in a `transformers.Trainer`.

Following the Trainer's documentation for custom gradient handling ("subclass and override
`training_step`"), `MultiTaskTrainer` overrides `training_step` to compute each task's loss and hand
them to a `StrategyStep` (bench.own_loop), which leaves the combined gradient in `.grad`; the Trainer
then clips, steps the optimizer and schedule, logs to `report_to` and saves checkpoints as usual.

The model contract: `model(task=TASK, **batch)` returns an output with `.loss` (and `.logits`); the
task heads' parameters are named `heads.<task>.` (everything else is shared). Regularisers also need
`model.get_input_embeddings()` and the forward to accept `inputs_embeds` in place of `input_ids`.
`train_dataset` is {task: dataset}; a step's batches are drawn as the sampler names the tasks.

Scope (each refused with one line): one process (the harness's data parallelism combines per-task
gradients across ranks; the Trainer's DDP would all-reduce the already combined one), no fp16 loss
scaling (bf16 works), gradient_accumulation_steps = 1 (a combination is not linear in its batches).
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from mtlbench.bench.own_loop import StrategyStep, TaskInputs
from mtlbench.strategies import registry
from mtlbench.tasks.errors import UserError
from torch.utils.data import DataLoader, IterableDataset
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

STATE_FILE = "mtlbench_strategies.pt"  # beside the Trainer's own files in each checkpoint-N/


class MultiTaskStream(IterableDataset):
    """Each step's {task: collated batch} for the tasks the sampler names. Epoch e (0-based) is a pure
    function of (seed, e): the sampler and each task's shuffles are seeded by it, so the Trainer's
    resume (which skips the epoch's first batches) sees the same batches again."""

    def __init__(self, datasets: Mapping[str, object], sampler, batch_size: int, collate, seed: int,
                 drop_last: bool = False, extra_batches: int = 0):
        self.datasets, self.sampler, self.batch_size, self.collate = dict(datasets), sampler, batch_size, collate
        self.seed, self.drop_last, self.extra_batches = seed, drop_last, extra_batches
        self.next_epoch = 0  # iterating starts this epoch and moves on (the Trainer iterates once per epoch)

    def __len__(self) -> int:
        return self.sampler.steps_per_epoch()

    def _batches(self, task: str, epoch: int, stream: int):
        """The task's batches, endlessly: a fresh shuffle each pass, seeded by (seed, epoch, stream, pass)."""
        size, index = len(self.datasets[task]), list(self.datasets).index(task)
        for cycle in itertools.count():
            seed = int(np.random.SeedSequence([self.seed, index, epoch, stream, cycle]).generate_state(1)[0])
            order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
            stop = size - size % self.batch_size if self.drop_last else size
            for start in range(0, stop, self.batch_size):
                yield self.collate([self.datasets[task][i] for i in order[start:start + self.batch_size]])

    def __iter__(self):
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        self.sampler.generator = random.Random(self.seed * 1_000_003 + epoch)
        streams = [{task: self._batches(task, epoch, k) for task in self.datasets} for k in range(1 + self.extra_batches)]
        for step_tasks in self.sampler.epoch(epoch + 1):
            step = {task: next(streams[0][task]) for task in step_tasks}
            if self.extra_batches:
                step["__extra__"] = [{task: next(s[task]) for task in step_tasks} for s in streams[1:]]
            yield {"__epoch__": epoch, **step}


class _AfterOptimizerStep(TrainerCallback):
    """FAMO and the like look at the losses after the optimizer step (Combiner.after_step)."""

    def __init__(self, trainer: MultiTaskTrainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.after_optimizer_step()


class MultiTaskTrainer(Trainer):
    """A Trainer whose step is a recipe's: `sampler` (required, as in a suite), `combiner`,
    `regularizers`, `freezing` as a suite names them (a name, or {"name": ..., option: value}). See
    the module docstring."""

    def __init__(self, *args, sampler, combiner="sum", regularizers=(), freezing=None,
                 task_specs: Mapping | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._check_scope()
        datasets, model = self.train_dataset, self.model
        if not isinstance(datasets, Mapping) or not datasets:
            raise UserError("MultiTaskTrainer: train_dataset must be {task: dataset}")
        tasks = list(datasets)
        shared = [p for n, p in model.named_parameters() if not n.startswith("heads.")]
        heads = {t: [p for n, p in model.named_parameters() if n.startswith(f"heads.{t}.")] for t in tasks}
        self.strategy = StrategyStep(tasks=tasks, shared=shared, heads=heads, combiner=combiner,
                                     regularizers=regularizers, freezing=freezing, model=model, seed=self.args.seed,
                                     precision="bf16" if self.args.bf16 else "fp32")
        batches = {t: -(-len(d) // self.args.per_device_train_batch_size) for t, d in datasets.items()}
        name, options = (sampler, {}) if isinstance(sampler, str) else (sampler["name"], {
            k: v for k, v in sampler.items() if k != "name"})
        self.sampler = registry.build("sampler", name, options, batches, {t: len(d) for t, d in datasets.items()},
                                      random.Random(self.args.seed), int(self.args.num_train_epochs), where="sampler")
        if self.strategy.combiner.needs_several_tasks and self.sampler.single_task:
            raise UserError(f"combiner: '{self.strategy.combiner.name}' combines several tasks' gradients in a step, "
                            f"and sampler '{name}' gives each step one task")
        self.task_specs = dict(task_specs or {})
        self.stream = MultiTaskStream(datasets, self.sampler, self.args.per_device_train_batch_size,
                                      self.data_collator, self.args.seed, self.args.dataloader_drop_last,
                                      self.strategy.combiner.extra_batches)
        self._epoch, self._logged, self._last = None, {}, None
        self.add_callback(_AfterOptimizerStep(self))

    def _check_scope(self) -> None:
        args = self.args
        if args.world_size > 1:
            raise UserError("MultiTaskTrainer runs in one process: under DDP the Trainer all-reduces the combined "
                            "gradient, not each task's (use `mtlbench run` with torchrun for data parallelism)")
        if args.fp16:
            raise UserError("MultiTaskTrainer: fp16 loss scaling is not applied to combined gradients; use bf16")
        if args.gradient_accumulation_steps != 1:
            raise UserError("MultiTaskTrainer: gradient_accumulation_steps must be 1 (a gradient combination is not "
                            "linear in its batches); raise per_device_train_batch_size instead")

    # --- data and optimizer ------------------------------------------------------------------

    def get_train_dataloader(self) -> DataLoader:
        """The stream as a DataLoader (batch_size=None: each item is already a step's batches), so the
        Trainer's length, epoch and resume-skip logic apply."""
        return DataLoader(self.stream, batch_size=None, collate_fn=lambda step: step)

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.strategy.freezing is not None:  # its learning-rate scales and decay rules
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            optimizer_kwargs.pop("lr", None)
            self.optimizer = optimizer_cls(self.strategy.optimizer_groups(self.args.learning_rate,
                                                                          self.args.weight_decay, self.args.device),
                                           lr=self.args.learning_rate, **optimizer_kwargs)
            return self.optimizer
        optimizer = super().create_optimizer(model)
        for group in self.strategy.combiner.optimizer_groups(self.args.learning_rate, self.args.device):
            optimizer.add_param_group(group)  # what the combiner learns (uncertainty weighting's log-variances)
        return optimizer

    # --- the step ------------------------------------------------------------------------------

    def _task_output(self, model, task: str, batch: Mapping) -> torch.Tensor:
        output = model(task=task, **batch)
        if isinstance(output, Mapping):  # a ModelOutput is one too
            return output["loss"]
        return output[0] if isinstance(output, tuple) else output.loss

    def _task_inputs(self, model, task: str, batch: Mapping) -> TaskInputs:
        rest = {k: v for k, v in batch.items() if k != "input_ids"}

        def forward(embeddings):
            output = model(task=task, inputs_embeds=embeddings, **rest)
            return output.loss, output.logits
        return TaskInputs(embeddings=model.get_input_embeddings()(batch["input_ids"]), forward=forward,
                          padding_mask=batch.get("attention_mask"), labels=batch.get("labels"),
                          spec=self.task_specs.get(task))

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        inputs = self._prepare_inputs(inputs)
        epoch, extra = inputs.pop("__epoch__"), inputs.pop("__extra__", [])
        if epoch != self._epoch:
            self._epoch = epoch
            for strategy in (self.strategy.freezing, self.strategy.combiner):
                if strategy is not None:
                    strategy.on_epoch_start(epoch + 1)
        if self.strategy.freezing is not None:
            self.strategy.freezing.on_step(self.state.global_step)
        self.strategy.learning_rate = self._get_learning_rate() if self.lr_scheduler is not None else 0.0
        with self.compute_loss_context_manager():
            losses = {task: self._task_inputs(model, task, batch) if self.strategy.regularizers
                      else self._task_output(model, task, batch) for task, batch in inputs.items()}
            extra_losses = [{t: self._task_output(model, t, b) for t, b in draw.items()} for draw in extra]
        own = self.strategy.backward(losses, extra=extra_losses or None)
        self._last = (model, inputs, own)
        for name, value in {**{f"loss/{t}": v for t, v in own.items()},
                            **self.strategy.combiner.step_scalars()}.items():
            total, count = self._logged.get(name, (0.0, 0))
            self._logged[name] = (total + float(value), count + 1)
        return sum(own.values()).detach()

    def after_optimizer_step(self) -> None:
        model, inputs, own = self._last

        def losses_after():
            with torch.no_grad(), self.compute_loss_context_manager():
                return {task: self._task_output(model, task, batch).detach() for task, batch in inputs.items()}
        self.strategy.after_step(own, losses_after)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's logs plus each task's loss and the combiner's weights and cosines, averaged
        over the steps since the last log: every `report_to` integration shows them."""
        if "loss" in logs:
            logs = {**logs, **{name: total / count for name, (total, count) in self._logged.items()}}
            self._logged = {}
        super().log(logs, start_time)

    # --- checkpoints ---------------------------------------------------------------------------

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        torch.save({"sampler": self.sampler.state_dict(), "combiner": self.strategy.combiner.state_dict(),
                    "regularizers": [r.state_dict() for r in self.strategy.regularizers],
                    "freezing": self.strategy.freezing.state_dict() if self.strategy.freezing else None,
                    "epoch": self._epoch}, folder / STATE_FILE)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """As the Trainer's; resumed, the strategies' state comes back from the checkpoint too."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
        if resume_from_checkpoint:
            self._load_strategies(Path(resume_from_checkpoint))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _load_strategies(self, folder: Path) -> None:
        saved = torch.load(folder / STATE_FILE, weights_only=False)
        device = self.args.device
        self.sampler.load_state_dict(saved["sampler"], device)
        self.strategy.combiner.load_state_dict(saved["combiner"], device)
        for regularizer, state in zip(self.strategy.regularizers, saved["regularizers"], strict=True):
            regularizer.load_state_dict(state, device)
        if self.strategy.freezing is not None:
            self.strategy.freezing.load_state_dict(saved["freezing"], device)
        steps = json.loads((folder / "trainer_state.json").read_text())["global_step"]
        self.stream.next_epoch = steps // len(self.stream)  # the epoch the Trainer resumes in
        self._epoch = saved["epoch"] if self.stream.next_epoch == saved["epoch"] else None


