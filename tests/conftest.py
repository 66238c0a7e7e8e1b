"""Shared fixtures: a private cache, a very small pretrained encoder, a tiny suite file."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

TINY_ENCODER = {"hidden_size": 32, "num_layers": 3, "num_heads": 2, "intermediate_size": 64,
                "max_positions": 48, "pretrain_steps": 40, "pretrain_batch_size": 32}
SMALL_DATA = {"sst_train": 96, "sst_dev": 48, "sst_test": 16, "quora_train": 192, "quora_dev": 48,
              "quora_test": 16, "sts_train": 96, "sts_dev": 48, "sts_test": 16}


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Every test writes its encoders and token caches under one session directory."""
    path = tmp_path_factory.mktemp("mtlbench-cache")
    previous = os.environ.get("MTLBENCH_CACHE")
    os.environ["MTLBENCH_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("MTLBENCH_CACHE", None)
    else:
        os.environ["MTLBENCH_CACHE"] = previous


def _toml_table(name: str, values: dict) -> str:
    return f"[{name}]\n" + "\n".join(f"{k} = {v!r}" for k, v in values.items()) + "\n"


def write_suite(path: Path, recipes: str, extra: str = "", train: str = "epochs = 1\nbatch_size = 16\nlr = 2e-3") -> Path:
    path.write_text(textwrap.dedent(f"""\
        name = "tiny-test"
        description = "test suite"
        tasks = ["sst", "quora", "sts"]
        {extra}
        [train]
        {train}
        """) + _toml_table("synthetic", SMALL_DATA) + _toml_table("tiny_encoder", TINY_ENCODER) + recipes)
    return path


@pytest.fixture(scope="session")
def tiny_encoder_path(private_cache):
    from bench import backbone
    from tasks.synthetic import SyntheticConfig

    backbone.quiet_transformers()
    return str(backbone.ensure_tiny(backbone.TinyEncoderConfig(**TINY_ENCODER), SyntheticConfig(**SMALL_DATA),
                                    log=lambda m: None))


@pytest.fixture(scope="session")
def tokenizer(tiny_encoder_path):
    from bench import backbone

    backbone.quiet_transformers()
    return backbone.load_tokenizer(tiny_encoder_path)


@pytest.fixture
def encoder(tiny_encoder_path):
    from bench import backbone

    return backbone.load_encoder(tiny_encoder_path)
