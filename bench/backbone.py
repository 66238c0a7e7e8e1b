"""Encoders: any Hugging Face model by name or path, or the embedded tiny BERT.

The tiny BERT is built in-process: a word-level tokenizer over the synthetic lexicon (`tokenizers`),
a small `BertConfig`, and a short masked-language-model pre-training on the synthetic training
corpus, so the default encoder is genuinely pretrained. The result is saved once under the cache
directory, keyed by everything that shapes it, and loaded like any other checkpoint afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
from mtlbench.bench.files import running
from mtlbench.bench.hub import hub_unreachable
from mtlbench.bench.settings import TINY
from mtlbench.tasks import synthetic
from mtlbench.tasks.errors import UserError

_TINY_VERSION = 3  # bump when the build below changes what it produces (2: the MLM head; 3: one fixed corpus)


def cache_root() -> Path:
    return Path(os.environ.get("MTLBENCH_CACHE", Path.home() / ".cache" / "mtlbench"))


def quiet_transformers() -> None:
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


@dataclass(frozen=True)
class TinyEncoderConfig:
    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 128
    max_positions: int = 64
    # Measured: at 64 wide and a few thousand steps, BERT's usual 0.1 dropout costs STS ~0.15 Pearson.
    dropout: float = 0.0
    pretrain_steps: int = 600
    pretrain_batch_size: int = 64
    pretrain_lr: float = 2e-3
    mask_probability: float = 0.15
    seed: int = 0

    # Sizes past these would exhaust a machine's memory before training starts: refused when read.
    LIMITS: ClassVar[dict[str, int]] = {"hidden_size": 4096, "num_layers": 48, "num_heads": 64, "intermediate_size": 16384,
              "max_positions": 8192, "pretrain_steps": 1_000_000, "pretrain_batch_size": 4096}

    def __post_init__(self):
        """Settings that cannot build an encoder fail when the suite is read, not mid-build."""
        for name, most in self.LIMITS.items():
            if not 1 <= getattr(self, name) <= most:
                raise ValueError(f"{name} must be from 1 to {most}, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        if self.max_positions < 8:
            raise ValueError(f"max_positions must be at least 8, got {self.max_positions}")
        if not 0 <= self.dropout < 1 or not 0 < self.mask_probability < 1 or not self.pretrain_lr > 0:
            raise ValueError("need 0 <= dropout < 1, 0 < mask_probability < 1 and pretrain_lr > 0")


def _tokenizer(vocabulary: list[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate(specials + vocabulary)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def _corpus() -> list[str]:
    """The pre-training text: the generator's default train sentences, whatever a suite's own
    [synthetic] sizes and noise (like a real encoder, pre-trained once on general text)."""
    texts, default = [], synthetic.SyntheticConfig()
    for task in ("sst", "quora", "sts"):
        for row in synthetic.generate(task, default).rows["train"]:
            texts.extend(row[k] for k in ("text", "text_a", "text_b") if k in row)
    return texts


def tiny_key(config: TinyEncoderConfig) -> str:
    """What the tiny encoder depends on: the build, its [tiny_encoder] settings, the vocabulary."""
    blob = json.dumps([_TINY_VERSION, asdict(config), synthetic.vocabulary()],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _tiny_bert_config(config: TinyEncoderConfig, tokenizer):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_positions, pad_token_id=tokenizer.pad_token_id,
        hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.dropout,
    )


def _pretrain(config: TinyEncoderConfig, target: Path, log) -> None:
    from transformers import BertForMaskedLM, DataCollatorForLanguageModeling

    torch.manual_seed(config.seed)
    tokenizer = _tokenizer(synthetic.vocabulary())
    model = BertForMaskedLM(_tiny_bert_config(config, tokenizer))
    encoded = tokenizer(_corpus(), truncation=True, max_length=config.max_positions)["input_ids"]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=config.mask_probability, seed=config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.pretrain_lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.pretrain_lr, total_steps=config.pretrain_steps)
    rng = random.Random(config.seed)
    model.train()
    for step in range(config.pretrain_steps):
        batch = collator([{"input_ids": encoded[i]} for i in rng.sample(range(len(encoded)), config.pretrain_batch_size)])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 200 == 0 or step + 1 == config.pretrain_steps:
            log(f"  tiny encoder MLM pre-training: step {step + 1}/{config.pretrain_steps}, loss {loss.item():.3f}")
    model.bert.save_pretrained(target)  # the encoder alone, loaded by AutoModel like any checkpoint
    # The pre-training head beside it, for MLM tasks (bench.model.mlm_head); its decoder weight is
    # the input embedding matrix (tied), so it is not stored twice.
    from safetensors.torch import save_file

    # decoder.bias is predictions.bias (shared); decoder.weight is the embedding matrix.
    head = {k: v.contiguous() for k, v in model.cls.state_dict().items() if not k.startswith("predictions.decoder.")}
    save_file(head, str(target / "mlm_head.safetensors"))
    tokenizer.save_pretrained(target)
    (target / "mtlbench-tiny.json").write_text(json.dumps(
        {"tiny_encoder": asdict(config), "corpus": "the synthetic generator's default train sentences",
         "final_mlm_loss": loss.item()},
        indent=2))


def _remove_abandoned_builds(folder: Path) -> None:
    """Staging folders of builds whose process is gone (killed mid-build)."""
    for staging in folder.glob(".building-*"):
        pid = staging.name.split("-")[1]
        if pid.isdigit() and running(int(pid)):
            continue
        shutil.rmtree(staging, ignore_errors=True)


def ensure_tiny(config: TinyEncoderConfig | None = None, log=print) -> Path:
    """Path of the pretrained tiny encoder, building it on first use."""
    config = config or TinyEncoderConfig()
    target = cache_root() / "encoders" / f"tiny-{tiny_key(config)}"
    if (target / "mtlbench-tiny.json").exists():
        return target
    log(f"building the tiny encoder (once; cached at {target})")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(target.parent)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".building-{os.getpid()}-"))
    try:
        _pretrain(config, staging, log)
        try:
            staging.rename(target)  # atomic: a reader sees a complete directory or none
        except OSError:
            if not (target / "mtlbench-tiny.json").exists():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve(model: str, tiny_config: TinyEncoderConfig, log=print) -> str:
    """The name or path to hand to `from_pretrained`."""
    return str(ensure_tiny(tiny_config, log)) if model == TINY else model


def load_part(loader, path: str, what: str, **options):
    """The one guard around loading a model's parts (config, tokenizer, weights): whatever goes
    wrong - not found, no network, a folder with only a tokenizer, a config that is not an object,
    truncated weights - is one line naming the model and the part."""
    offline = not Path(path).is_dir() and hub_unreachable()
    try:
        return loader.from_pretrained(path, **options, **({"local_files_only": True} if offline else {}))
    except Exception as error:  # noqa: BLE001 - transformers raises many types for a broken folder
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if offline:
            raise UserError(f"could not load the {what} of model '{path}': not a local folder, not in the Hugging "
                            f"Face cache, and the hub cannot be reached (offline) - a local directory, a cached name, "
                            f"or '{TINY}'") from None
        raise UserError(f"could not load the {what} of model '{path}': {first_line[:300]} "
                        f"(a local directory, a name in your Hugging Face cache, or '{TINY}')") from None


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return load_part(AutoTokenizer, path, "tokenizer")


def max_positions(path: str, tokenizer) -> int:
    """The longest input the encoder takes: its tokenizer's limit when it states one, else its
    position embeddings (RoBERTa-style models reserve two of those for padding offsets)."""
    from transformers import AutoConfig

    stated = getattr(tokenizer, "model_max_length", None)
    if isinstance(stated, int) and 0 < stated < 1_000_000:
        return stated
    config = load_part(AutoConfig, path, "config")
    positions = getattr(config, "max_position_embeddings", None) or 512
    offset = 2 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else 0
    return positions - offset


def load_encoder(path: str):
    from transformers import AutoModel

    return load_part(AutoModel, path, "encoder")


def encoder_outline(model: str, tiny_config: TinyEncoderConfig):
    """The encoder's modules on the meta device, from its config alone: every parameter's name and
    shape, with no weights built, read or allocated (what validating a recipe needs). The tiny
    encoder's config is the one its build uses; another model's is read from its folder or cache."""
    from transformers import AutoConfig, AutoModel

    if model == TINY:
        config = _tiny_bert_config(tiny_config, _tokenizer(synthetic.vocabulary()))
    else:
        config = load_part(AutoConfig, model, "config")
    with torch.device("meta"):
        return AutoModel.from_config(config)
