"""Mixed precision (bench.precision): bf16 and fp16 runs on CPU, per-task gradients unscaled before
the combiner, and fp16 overflow steps skipped and counted."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from mtlbench.bench.cli import main
from mtlbench.bench.precision import DynamicLossScale, StepPipeline
from mtlbench.bench.settings import TrainSettings
from mtlbench.bench.step import Strategies, make_optimizer, training_step
from mtlbench.strategies import registry
from mtlbench.strategies.gradients import GradientCombiner

from tests.conftest import write_suite

NO_COST = "[cost]\nenabled = false\n"


def _strategies(model, combiner_name, regularizers=()):
    tasks = list(model.specs)
    combiner = registry.build("combiner", combiner_name, {}, tasks, torch.Generator().manual_seed(0))
    built = [registry.build("regularizer", name, {"epsilon": 0.05}, torch.Generator().manual_seed(1))
             for name in regularizers]
    return Strategies(None, combiner, built, registry.build("freezing", "none", {}, model))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_mixed_precision_run_trains_and_says_so_in_its_record(precision, tmp_path, capsys):
    suite = write_suite(tmp_path / "amp.toml", name="amp", recipes=NO_COST + '[[recipes]]\nname = "pc"\n'
                        'sampler = "joint"\ncombiner = "pcgrad"\n[[recipes]]\nname = "fgm"\nsampler = "joint"\n'
                        'regularizers = [{ name = "fgm", epsilon = 0.05 }]\n')
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--precision", precision, "--jobs", "1"]) == 0
    for name in ("pc", "fgm"):
        record = json.loads((out / f"amp.{name}-seed0.json").read_text())
        assert record["status"] == "finished" and record["config"]["suite"]["train"]["precision"] == precision
        assert record["train"]["precision"] == precision and record["train"]["step_timing"] == "wall_clock"
        assert all(math.isfinite(v) for v in record["history"][-1]["train_loss"].values())
        assert 0 <= record["metrics"]["sst"]["accuracy"] <= 1
        assert record["train"]["model_flops"] > 0 and record["train"]["mfu"] is None  # no peak known for a CPU
        if precision == "fp16":
            # each skipped step halved the scale; 2000 clean steps to double it are not reached
            assert record["train"]["loss_scale"] == 2.0 ** (16 - record["train"]["skipped_steps"])
        else:
            assert "skipped_steps" not in record["train"]  # bf16 has fp32's range: no loss scale


def test_precision_is_checked_when_the_suite_is_read(tmp_path, capsys):
    suite = write_suite(tmp_path / "bad.toml", recipes='[[recipes]]\nname = "a"\n',
                        train="epochs = 1\nprecision = \"fp8\"")
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 2
    assert "precision must be one of fp32, bf16, fp16" in capsys.readouterr().err
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--precision", "half"]) == 2
    with pytest.raises(ValueError, match="precision"):
        TrainSettings(precision="tf32")


@pytest.mark.parametrize("combiner_name", ["pcgrad", "sum"])
def test_fp16_gradients_reach_the_combiner_unscaled(combiner_name, real_step, monkeypatch):
    """The combiner's per-task gradients (and `.grad` after a plain backward) are those of fp32 up
    to float16 rounding, not S = 2^16 times them."""
    model, batches = real_step
    found = {}
    original = GradientCombiner.aggregate if combiner_name == "pcgrad" else None

    def capture(self, gradients, gramian, step):
        found.setdefault("gradients", []).append(gradients.clone())
        return type(self).__mro__[1].aggregate(self, gradients, gramian, step)
    if original is not None:
        monkeypatch.setattr(registry.get("combiner", "pcgrad"), "aggregate", capture)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {}
    for precision in ("fp32", "fp16"):
        model.load_state_dict(initial, strict=False)
        strategies = _strategies(model, combiner_name)
        optimizer = make_optimizer(strategies.freezing.parameter_groups(0.0 + 1e-9, 0.0))
        pipeline = StepPipeline(precision)
        steps = []
        monkeypatch.setattr(optimizer, "step", lambda steps=steps: steps.append(
            torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])))
        while not steps and pipeline.skipped_steps < 8:  # fp16: 2^16 overflows these gradients at first
            training_step(model, strategies, batches, optimizer, None, 0.0, pipeline)
        grads[precision] = steps[0]
    assert pipeline.loss_scale() == 2.0 ** (16 - pipeline.skipped_steps) >= 2.0 ** 10  # the losses were scaled ...
    cosine = torch.nn.functional.cosine_similarity(grads["fp32"], grads["fp16"], dim=0)
    ratio = grads["fp16"].norm() / grads["fp32"].norm()
    assert cosine > 0.99 and abs(ratio - 1) < 0.02  # ... and the gradients divided back
    if original is not None:
        fp32, fp16 = found["gradients"]
        assert abs(fp16.norm() / fp32.norm() - 1) < 0.02  # before the Gramian


@pytest.mark.parametrize("combiner_name, regularizers", [("pcgrad", ()), ("sum", ()), ("sum", ("fgm",))])
def test_an_fp16_overflow_step_is_skipped_counted_and_halves_the_scale(combiner_name, regularizers, real_step):
    model, batches = real_step
    strategies = _strategies(model, combiner_name, regularizers)
    optimizer = make_optimizer(strategies.freezing.parameter_groups(1e-3, 0.01))
    pipeline = StepPipeline("fp16")
    pipeline.scaler.scale = 2.0 ** 8  # below what overflows these gradients by itself (2^16 does)
    planted = {"step": 1, "now": 0}
    shared = model.shared_parameters()[5]
    # An overflow planted in one step's gradient of a shared parameter (as a float16 overflow
    # would leave it): that step must change nothing.
    shared.register_hook(lambda g: torch.full_like(g, math.inf) if planted["now"] == planted["step"] else g)
    before = []
    for step in range(3):
        planted["now"] = step
        before.append({n: p.detach().clone() for n, p in model.named_parameters()})
        training_step(model, strategies, batches, optimizer, None, 1.0, pipeline)
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert pipeline.skipped_steps == 1 and pipeline.loss_scale() == 2.0 ** 7
    assert all(torch.equal(before[1][n], before[2][n]) for n in after)  # the skipped step changed nothing
    assert not all(torch.equal(before[0][n], before[1][n]) for n in after)  # the others did
    assert not all(torch.equal(before[2][n], after[n]) for n in after)
    assert all(torch.isfinite(p).all() for p in after.values())
    assert all(p.grad is None for p in model.parameters())
    assert pipeline.summary() == {"precision": "fp16", "processes": 1, "skipped_steps": 1, "loss_scale": 2.0 ** 7}


def test_the_loss_scale_follows_torch_amps_rule():
    scale = DynamicLossScale(growth_interval=3)
    for overflowed in (False, False, False, True, False):
        scale.update(overflowed)
    assert scale.scale == 2.0 ** 16 and scale.clean_steps == 1  # x2 after 3 clean steps, /2 on the overflow
    restored = DynamicLossScale()
    restored.load_state_dict(scale.state_dict())
    assert (restored.scale, restored.clean_steps) == (scale.scale, scale.clean_steps)


def test_bf16_gradients_carry_bf16_precision_into_the_rank_decisions():
    pipeline = StepPipeline("bf16")
    assert pipeline.compute_eps == torch.finfo(torch.bfloat16).eps and pipeline.loss_scale() == 1.0
    assert not pipeline.changes_gradients


def test_an_fp16_run_resumed_from_its_epoch_1_checkpoint_ends_as_if_never_stopped(tmp_path, capsys):
    """The loss scale and the skip count are part of the checkpoint."""
    suite = write_suite(tmp_path / "resume.toml", name="resume",
                        recipes=NO_COST + "[checkpoints]\nkeep = 2\n[[recipes]]\nname = \"pc\"\nsampler = \"joint\"\n"
                        "combiner = \"pcgrad\"\n", train="epochs = 2\nbatch_size = 16\nlr = 2e-3\nprecision = \"fp16\"")
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--no-progress"]) == 0
    whole = json.loads((out / "resume.pc-seed0.json").read_text())
    (out / "resume.pc-seed0.json").unlink()
    shutil.rmtree(out / "checkpoints" / "resume.pc-seed0" / "epoch-0002")
    assert main(["run", str(suite), "--out", str(out), "--no-progress"]) == 0
    assert "resuming after epoch 1" in capsys.readouterr().err
    resumed = json.loads((out / "resume.pc-seed0.json").read_text())
    assert resumed["history"] == whole["history"] and resumed["train"]["resumed_from_epoch"] == 1
    for key in ("skipped_steps", "loss_scale", "steps", "examples"):
        assert resumed["train"][key] == whole["train"][key], key
