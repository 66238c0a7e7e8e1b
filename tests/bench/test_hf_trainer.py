"""`mtlbench.MultiTaskTrainer`: docs/hf_trainer.md's example trains two tasks with MGDA and FGM and
the combiner's weights reach the Trainer's logs and TensorBoard; a run stopped after a checkpoint
and resumed ends with the uninterrupted run's weights (FAMO: combiner state and after_step); the
step's gradients are StrategyStep's; what it cannot do is refused with one line."""

import re
from pathlib import Path

import mtlbench
import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

DOC = Path(__file__).parents[2] / "docs" / "hf_trainer.md"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The docs block run as written (in a folder of its own); its namespace."""
    pytest.importorskip("tensorboard")
    code = re.search(r"^```python\n(.*?)^```", DOC.read_text(), re.DOTALL | re.MULTILINE).group(1)
    folder = tmp_path_factory.mktemp("hf")
    namespace = {"__name__": "hf_trainer_example"}
    previous = Path.cwd()
    try:
        import os
        os.chdir(folder)
        exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 -- the docs' example, on purpose
    finally:
        os.chdir(previous)
    namespace["folder"] = folder
    return namespace


def test_the_docs_example_trains_two_tasks_and_logs_the_combiner_s_weights(example):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = [log for log in example["trainer"].state.log_history if "loss" in log]
    assert len(logs) == 6  # 12 steps, logging_steps = 2
    for log in logs:
        assert log["weight/parity"] + log["weight/count"] == pytest.approx(1.0)  # MGDA: a convex combination
        assert log["loss/parity"] > 0 and log["loss/count"] > 0 and -1 <= log["cosine/parity|count"] <= 1
    assert logs[-1]["loss/count"] < logs[0]["loss/count"] and logs[-1]["loss"] < logs[0]["loss"]
    (events,) = {p.parent for p in (example["folder"] / "hf-run").rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    assert {"train/weight/parity", "train/weight/count", "train/loss/parity", "train/cosine/parity|count"} <= set(scalars)
    assert [e.step for e in accumulator.Scalars("train/weight/parity")] == [2, 4, 6, 8, 10, 12]
    assert {p.name for p in (example["folder"] / "hf-run").iterdir()} >= {"checkpoint-6", "checkpoint-12"}
    assert (example["folder"] / "hf-run" / "checkpoint-6" / "mtlbench_strategies.pt").is_file()


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _trained(example, out, stop=None, resume=False):
    torch.manual_seed(0)
    model = example["TwoTaskBert"]()
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=16, num_train_epochs=2,
                             learning_rate=1e-3, save_steps=3, report_to=[], use_cpu=True, seed=0,
                             disable_tqdm=True)
    trainer = mtlbench.MultiTaskTrainer(model=model, args=args, train_dataset=example["datasets"], sampler="joint",
                                        combiner="famo",
                                        callbacks=[StopAt(stop)] if stop else None)
    trainer.train(resume_from_checkpoint=resume or None)
    return trainer


def test_a_run_resumed_from_a_checkpoint_ends_as_the_uninterrupted_one(example, tmp_path):
    whole = _trained(example, tmp_path / "whole")
    stopped = _trained(example, tmp_path / "resumed", stop=9)  # mid-epoch 2 (6 steps an epoch), after checkpoint-9
    assert stopped.state.global_step == 9
    resumed = _trained(example, tmp_path / "resumed", resume=True)
    assert resumed.state.global_step == 12
    for (name, expected), got in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(resumed.strategy.combiner.state_dict()["logits"],
                               whole.strategy.combiner.state_dict()["logits"])


def test_the_trainer_s_step_leaves_the_strategy_step_s_gradients(example, tmp_path):
    torch.manual_seed(1)
    model = example["TwoTaskBert"]()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, report_to=[], use_cpu=True)
    trainer = mtlbench.MultiTaskTrainer(model=model, args=args, train_dataset=example["datasets"], sampler="joint",
                                        combiner="pcgrad")
    step = next(iter(trainer.get_train_dataloader()))
    batches = {t: b for t, b in step.items() if not t.startswith("__")}
    torch.manual_seed(2)  # the same dropout masks in both
    trainer.training_step(model, dict(step))
    from_trainer = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    own = mtlbench.StrategyStep(tasks=list(batches), combiner="pcgrad",
                                shared=[p for n, p in model.named_parameters() if not n.startswith("heads.")],
                                heads={t: model.heads[t].parameters() for t in batches})
    torch.manual_seed(2)
    own.backward({t: model(task=t, **b).loss for t, b in batches.items()})
    assert from_trainer.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, grad in from_trainer.items():
        torch.testing.assert_close(grad, dict(model.named_parameters())[name].grad, msg=name)


@pytest.mark.parametrize(("change", "message"), [
    ({"args": {"gradient_accumulation_steps": 2}}, "gradient_accumulation_steps must be 1"),
    ({"train_dataset": [1, 2]}, r"train_dataset must be \{task: dataset\}"),
    ({"sampler": "round_robin", "combiner": "pcgrad"}, "'pcgrad' combines several tasks' gradients in a step"),
    ({"combiner": "pcgard"}, "combiner: unknown combiner 'pcgard'"),
])
def test_what_it_cannot_do_is_one_line(example, tmp_path, change, message):
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **change.get("args", {}))
    kwargs = {"train_dataset": example["datasets"], "sampler": "joint", **{k: v for k, v in change.items() if k != "args"}}
    with pytest.raises(mtlbench.UserError, match=message):
        mtlbench.MultiTaskTrainer(model=example["TwoTaskBert"](), args=args, **kwargs)
