"""Data parallelism (bench.parallel): two gloo processes on CPU, each holding a shard of every task's
batch, end three steps with the parameters one process gets on the whole batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mtlbench.bench import backbone
from mtlbench.bench.cli import main
from mtlbench.bench.data import Encoding, collate, tokenize
from mtlbench.bench.model import MultiTaskModel
from mtlbench.bench.parallel import SINGLE, Ranks
from mtlbench.bench.precision import StepPipeline
from mtlbench.bench.step import Strategies, make_optimizer, training_step
from mtlbench.strategies import registry
from mtlbench.tasks.builtin import QUORA, SST, STS
from mtlbench.tasks.synthetic import SyntheticConfig, generate

from tests.conftest import write_suite

# (combiner, regularisers): the acceptance's sum, PCGrad, MGDA and FGM, and methods that read the
# loss values (FAMO, after the step too) or transform them (DB-MTL's log loss).
CASES = [("sum", ()), ("pcgrad", ()), ("mgda", ()), ("sum", ("fgm",)), ("pcgrad", ("fgm",)), ("famo", ()),
         ("db_mtl", ())]
# Rows per task batch in each of the three steps: 7 does not split evenly over two ranks.
ROWS = {"sst": 7, "quora": 8, "sts": 6}
STEPS = 3


def _step_batches(tokenizer, cache) -> list[dict[str, dict]]:
    config = SyntheticConfig(sst_train=STEPS * ROWS["sst"], quora_train=STEPS * ROWS["quora"],
                             sts_train=STEPS * ROWS["sts"])
    steps = [{} for _ in range(STEPS)]
    for spec, mode in ((SST, "single"), (QUORA, "bi"), (STS, "bi")):
        rows = tokenize(generate(spec.name, config).rows["train"], tokenizer, Encoding(mode, 32), Path(cache)).to_list()
        n = ROWS[spec.name]
        for step in range(STEPS):
            steps[step][spec.name] = collate(rows[step * n:(step + 1) * n], spec, tokenizer.pad_token_id)
    return steps


def _parameters_after_steps(encoder_path: str, cache, ranks: Ranks, reduced: list | None = None
                            ) -> dict[str, dict[str, torch.Tensor]]:
    """Per case: the named parameters after three steps, this process holding `ranks`' shards; with
    `reduced` (the sizes of the all-reduces made so far), also how many values each step reduced."""
    torch.set_num_threads(1)
    backbone.quiet_transformers()
    tokenizer = backbone.load_tokenizer(encoder_path)
    steps = _step_batches(tokenizer, cache)
    tasks = ["sst", "quora", "sts"]
    found = {}
    for combiner_name, regularizer_names in CASES:
        torch.manual_seed(0)
        model = MultiTaskModel(backbone.load_encoder(encoder_path), [SST, QUORA, STS], "mean",
                               "concat_product").eval()  # no dropout: the masks would differ
        combiner = registry.build("combiner", combiner_name, {}, tasks, torch.Generator().manual_seed(0))
        regularizers = [registry.build("regularizer", name, {"epsilon": 0.05}, torch.Generator().manual_seed(1))
                        for name in regularizer_names]
        freezing = registry.build("freezing", "none", {}, model)
        strategies = Strategies(None, combiner, regularizers, freezing)
        optimizer = make_optimizer(freezing.parameter_groups(1e-3, 0.01) + combiner.optimizer_groups(1e-3, "cpu"))
        pipeline = StepPipeline("fp32", torch.device("cpu"), ranks)
        per_step = []
        for batches in steps:
            local, shares = {}, {}
            for task, batch in batches.items():
                local[task], shares[task] = ranks.shard(batch)
            before = len(reduced) if reduced is not None else 0
            training_step(model, strategies, local, optimizer, None, 1.0, pipeline, shares)
            per_step.append(reduced[before:] if reduced is not None else [])
        found[f"{combiner_name}+{'+'.join(regularizer_names)}"] = {
            "_reduced": per_step, **{name: parameter.detach().clone() for name, parameter in model.named_parameters()}}
    return found


def _rank(rank: int, world: int, init_file: str, encoder_path: str, cache: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    reduced = []
    all_reduce = dist.all_reduce

    def counting_all_reduce(tensor, *args, **kwargs):
        reduced.append(tensor.numel())
        return all_reduce(tensor, *args, **kwargs)
    dist.all_reduce = counting_all_reduce
    try:
        found = _parameters_after_steps(encoder_path, cache, Ranks(rank, world), reduced)
        torch.save(found, f"{out}.rank{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_train_like_one_process_on_the_whole_batches(tiny_encoder_path, tmp_path):
    cache = os.environ["MTLBENCH_CACHE"] + "/tokens"
    out = str(tmp_path / "parameters")
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), tiny_encoder_path, cache, out), nprocs=2, join=True)
    single = _parameters_after_steps(tiny_encoder_path, cache, SINGLE)
    ranks = [torch.load(f"{out}.rank{r}") for r in range(2)]
    torch.manual_seed(0)
    start = MultiTaskModel(backbone.load_encoder(tiny_encoder_path), [SST, QUORA, STS], "mean", "concat_product")
    reached = sum(p.numel() for name, p in start.named_parameters() if ".pooler." not in name)  # no task uses it
    heads = sum(p.numel() for group in start.task_parameters().values() for p in group)
    shared = sum(p.numel() for p in start.shared_parameters())
    for case, expected in single.items():
        # Gradients cross the ranks once a step, in one collective: the per-task rows (T x shared
        # parameters) and the heads for a per-task combiner, the summed gradient otherwise - never both.
        gradient_sized = [[n for n in step if n > 100] for step in ranks[0][case].pop("_reduced")]
        expected.pop("_reduced")
        per_task = 3 * shared + heads if case.split("+")[0] in ("pcgrad", "mgda", "db_mtl") else reached
        assert gradient_sized == [[per_task]] * STEPS, case
        moved = max((expected[n] - p).abs().max().item() for n, p in start.named_parameters())
        assert moved > 1e-4, case  # the steps changed the weights: the comparison means something
        for name, value in expected.items():
            for rank in ranks:
                assert torch.allclose(rank[case][name], value, atol=1e-5, rtol=0), (case, name)
        # every rank applied the same update
        assert all(torch.equal(ranks[0][case][n], ranks[1][case][n]) for n in expected), case


def test_a_shard_splits_both_sides_of_a_pair_batch_and_counts_its_rows():
    batch = {"input_ids": torch.arange(10).view(10, 1), "labels": torch.arange(5)}
    first, share0 = Ranks(0, 2).shard(batch)
    second, share1 = Ranks(1, 2).shard(batch)
    assert first["labels"].tolist() == [0, 1] and first["input_ids"].view(-1).tolist() == [0, 1, 5, 6]
    assert second["labels"].tolist() == [2, 3, 4] and second["input_ids"].view(-1).tolist() == [2, 3, 4, 7, 8, 9]
    assert (share0, share1) == (0.4, 0.6)
    lonely, share = Ranks(0, 2).shard({"input_ids": torch.zeros(1, 3), "labels": torch.zeros(1)})
    assert share == 0.0 and lonely["labels"].shape[0] == 1  # one row that counts for nothing
    with pytest.raises(ValueError, match="batch\\['x'\\] has 3 rows for 5 examples"):
        Ranks(0, 2).shard({**batch, "x": torch.zeros(3)})


def _torchrun(*args: str, env: dict) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    return subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "mtlbench.bench.cli", *args],
                          capture_output=True, text=True, env=env, check=False)


def test_torchrun_trains_one_run_on_two_processes_and_rank0_alone_writes(tmp_path):
    """The CLI under torchrun: one record (written once, by rank 0) whose training matches a
    one-process run of the same suite (dropout 0, so that the two see the same network)."""
    suite = write_suite(tmp_path / "ddp.toml", name="ddp", recipes="[cost]\nenabled = false\n[[recipes]]\n"
                        'name = "pc"\nsampler = "joint"\ncombiner = "pcgrad"\n',
                        train="epochs = 2\nbatch_size = 15\nlr = 2e-3\ndropout = 0.0")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    together = _torchrun("run", str(suite), "--out", str(tmp_path / "ddp"), "--no-progress", "--seeds", "2", env=env)
    assert together.returncode == 0, together.stderr[-3000:]
    assert together.stdout.count("| pc (baseline)") == 1  # rank 0 alone prints the table
    assert main(["run", str(suite), "--out", str(tmp_path / "one"), "--no-progress", "--seeds", "2"]) == 0
    records = {p.name: json.loads(p.read_text()) for p in (tmp_path / "ddp").glob("*.json")}
    assert sorted(records) == ["ddp.pc-seed0.json", "ddp.pc-seed1.json"]  # one run after the other
    for name, record in records.items():
        single = json.loads((tmp_path / "one" / name).read_text())
        assert record["train"]["processes"] == 2 and single["train"]["processes"] == 1
        assert record["train"]["examples"] == single["train"]["examples"]  # every example counted once
        for epoch, one in zip(record["history"], single["history"], strict=True):
            for task, loss in one["train_loss"].items():
                assert epoch["train_loss"][task] == pytest.approx(loss, rel=1e-4)
            for task, metrics in one["dev"].items():
                assert epoch["dev"][task] == pytest.approx(metrics, abs=1e-3)
    assert not list((tmp_path / "ddp").rglob("*.tmp"))
    assert (tmp_path / "ddp" / "table.md").exists()
    # finished: a second launch finds the record and trains nothing
    again = _torchrun("run", str(suite), "--out", str(tmp_path / "ddp"), "--no-progress", "--seeds", "2", env=env)
    assert again.returncode == 0 and "2 of 2 runs already finished" in again.stderr
