"""Shared encoder + pooling + one head per task.

Pair heads (the CS224N report's options, SBERT's feature sets):
- `cosine` (option 1): a learned scale and offset on cos(u, v);
- `concat` (option 2): [u; v; |u-v|] -> linear;
- `concat_product` (option 3): [u; v; |u-v|; u*v] -> linear;
- `cross`: the pair encoded as one input ([CLS] a [SEP] b [SEP]) -> pooled -> linear.
Bi-encoder pairs are encoded in one batched encoder call (both sides stacked).

Token-level kinds read the last hidden state, not a pooled vector: a tagging head is a linear layer
per token (seed 003's NER head); the MLM head is the checkpoint's own when it has one (seed 000's
`BertLMPredictionHead`, its decoder tied to the encoder's input embeddings), else a fresh one of the
same architecture, and it runs on the masked positions only (a vocabulary-wide output per token
would cost B x L x V). The head is chosen by kind from `HEADS`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from mtlbench.bench.data import IGNORE
from mtlbench.tasks.spec import TaskKind, TaskSpec
from torch import Tensor, nn

POOLINGS = ("cls", "mean", "max", "pooler", "last4_mean")
PAIR_HEADS = ("cosine", "concat", "concat_product", "cross")
SINGLE_HEADS = ("linear", "tanh_mlp")


def _masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def pool(method: str, outputs, mask: Tensor) -> Tensor:
    if method == "cls":
        return outputs.last_hidden_state[:, 0]
    if method == "mean":
        return _masked_mean(outputs.last_hidden_state, mask)
    if method == "max":
        hidden = outputs.last_hidden_state.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(outputs.last_hidden_state.dtype).min)
        return hidden.max(1).values
    if method == "pooler":
        if getattr(outputs, "pooler_output", None) is None:
            raise ValueError("pooling 'pooler': this encoder has no pooler layer")
        return outputs.pooler_output
    if method == "last4_mean":
        # Mean-pool each of the last four hidden states and concatenate (4 x hidden wide).
        return torch.cat([_masked_mean(h, mask) for h in outputs.hidden_states[-4:]], dim=-1)
    raise ValueError(f"unknown pooling {method!r}")


def _classifier(kind: str, width: int, outputs: int, dropout: float) -> nn.Module:
    layers = [nn.Dropout(dropout)]
    if kind == "tanh_mlp":
        layers += [nn.Linear(width, width), nn.Tanh(), nn.Dropout(dropout)]
    return nn.Sequential(*layers, nn.Linear(width, outputs))


class ToRange(nn.Module):
    """Wraps a head so its standardised output o lands on [low, high]: middle + half_width * o.

    A regression head then predicts in units of the label range: output 0 is mid-range, and the
    head's weights need not grow to the label scale (0-5) before the signal is fitted, which at
    small scale stalled STS for the first epoch (measured).
    """

    def __init__(self, head: nn.Module, low: float, high: float):
        super().__init__()
        self.head = head
        self.middle, self.half_width = (low + high) / 2, (high - low) / 2

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.middle + self.half_width * self.head(*inputs)


class CosineHead(nn.Module):
    """score = scale * cos(u, v) + offset (option 1)."""

    def __init__(self, scale: float, offset: float):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))
        self.offset = nn.Parameter(torch.tensor(offset))

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        return (self.scale * F.cosine_similarity(u, v, dim=-1) + self.offset).unsqueeze(-1)


class FeatureHead(nn.Module):
    """[u; v; |u-v|] (option 2) or [u; v; |u-v|; u*v] (option 3) -> classifier."""

    def __init__(self, with_product: bool, width: int, outputs: int, dropout: float, kind: str):
        super().__init__()
        self.with_product = with_product
        self.classifier = _classifier(kind, width * (4 if with_product else 3), outputs, dropout)

    def forward(self, u: Tensor, v: Tensor) -> Tensor:
        features = [u, v, (u - v).abs()] + ([u * v] if self.with_product else [])
        return self.classifier(torch.cat(features, dim=-1))


@dataclass
class TaskOutput:
    loss: Tensor
    predictions: Tensor  # class ids or scores, detached
    pooled: Tensor
    logits: Tensor
    representation: Tensor  # what the head reads: the pooled vectors, or the output states (token kinds)


def task_loss(spec: TaskSpec, logits: Tensor, labels: Tensor) -> Tensor:
    if spec.kind is TaskKind.PAIR_REGRESSION:
        return F.mse_loss(logits.squeeze(-1), labels)
    if spec.kind.is_token_level:
        # MLM logits are those of the masked positions already; a tagging batch flattens its tokens.
        logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        if not (labels != IGNORE).any():  # a batch with nothing to score: zero, not NaN
            return logits.sum() * 0.0
        return F.cross_entropy(logits, labels, ignore_index=IGNORE)
    if spec.num_labels == 1:
        return F.binary_cross_entropy_with_logits(logits.squeeze(-1), labels)
    return F.cross_entropy(logits, labels)


def predictions(spec: TaskSpec, logits: Tensor) -> Tensor:
    if spec.kind is TaskKind.PAIR_REGRESSION:
        return logits.squeeze(-1)
    if spec.num_labels == 1 and not spec.kind.is_token_level:
        return (logits.squeeze(-1) > 0).long()
    return logits.argmax(-1)


class TokenHead(nn.Module):
    """A class per token from the last hidden state (seed 003's NER head, seed 000's entity head)."""

    def __init__(self, width: int, outputs: int, dropout: float):
        super().__init__()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, outputs))

    def forward(self, hidden: Tensor) -> Tensor:
        return self.classifier(hidden)


def mlm_head(encoder: nn.Module, model_path: str | None) -> tuple[nn.Module, str]:
    """The checkpoint's masked-LM head when it has one, else a fresh head of its architecture;
    and which ('checkpoint' or 'fresh: why'). The decoder is tied to `encoder`'s input embeddings
    when the architecture ties them."""
    from transformers import AutoModelForMaskedLM

    if model_path is None:
        masked_lm, missing, source = AutoModelForMaskedLM.from_config(encoder.config), [], "fresh: no checkpoint"
    else:
        from mtlbench.bench.backbone import load_part

        masked_lm, info = load_part(AutoModelForMaskedLM, model_path, "masked-LM head", output_loading_info=True)
        missing = [k for k in info["missing_keys"] if not k.startswith(masked_lm.base_model_prefix + ".")]
        source = "checkpoint"
    heads = [m for name, m in masked_lm.named_children() if name != masked_lm.base_model_prefix]
    if len(heads) != 1:
        raise ValueError(f"{type(masked_lm).__name__}: expected one MLM head module beside the encoder, "
                         f"found {[n for n, _ in masked_lm.named_children()]}")
    head = heads[0]
    saved = None if model_path is None else Path(model_path) / MLM_HEAD_FILE
    if missing and saved is not None and saved.exists():
        # mtlbench's tiny encoder keeps its pre-training head beside the encoder weights.
        from safetensors.torch import load_file

        state = load_file(str(saved))
        head.load_state_dict(state, strict=False)
        # A key is loaded if its tensor is, under another name too (BERT's decoder.bias is predictions.bias).
        loaded = {head.get_parameter(k).data_ptr() for k in state}
        missing = [k for k in missing if head.get_parameter(k.split(".", 1)[1]).data_ptr() not in loaded]
        source = f"checkpoint ({MLM_HEAD_FILE})"
    output = masked_lm.get_output_embeddings()
    tied = output is not None and getattr(masked_lm.config, "tie_word_embeddings", False)
    if tied:
        output.weight = encoder.get_input_embeddings().weight
        missing = [k for k in missing if not k.endswith(".decoder.weight")]
    if missing:
        source = f"fresh: the checkpoint has no {', '.join(missing[:3])}"
    return head, source


MLM_HEAD_FILE = "mlm_head.safetensors"


def _sentence_head(model: MultiTaskModel, spec: TaskSpec) -> nn.Module:
    width = model.width
    if model.pair_head == "cosine" and spec.kind.is_pair:
        # cos in [-1, 1]: a learned scale and offset, starting at the label range or as a logit.
        low, high = spec.label_range or (-5.0, 5.0)
        return CosineHead((high - low) / 2, (low + high) / 2)
    if spec.kind.is_pair and model.pair_head != "cross":
        head = FeatureHead(model.pair_head == "concat_product", width, spec.num_labels, model.dropout,
                           model.single_head)
    else:
        head = _classifier(model.single_head, width, spec.num_labels, model.dropout)
    return ToRange(head, *spec.label_range) if spec.label_range else head


def _token_head(model: MultiTaskModel, spec: TaskSpec) -> nn.Module:
    return TokenHead(model.encoder.config.hidden_size, spec.num_labels, model.dropout)


def _mlm_head(model: MultiTaskModel, spec: TaskSpec) -> nn.Module:
    head, model.mlm_head_source = mlm_head(model.encoder, model.model_path)
    return head


HEADS: dict[TaskKind, Callable[[MultiTaskModel, TaskSpec], nn.Module]] = {
    TaskKind.SINGLE_CLASSIFICATION: _sentence_head,
    TaskKind.PAIR_CLASSIFICATION: _sentence_head,
    TaskKind.PAIR_REGRESSION: _sentence_head,
    TaskKind.TOKEN_IOB: _token_head,
    TaskKind.TOKEN_BINARY: _token_head,
    TaskKind.MLM: _mlm_head,
}


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, tasks: list[TaskSpec], pooling: str, pair_head: str,
                 single_head: str = "linear", dropout: float = 0.1, model_path: str | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}")
        self.encoder = encoder
        self.specs = {t.name: t for t in tasks}
        self.pooling = pooling
        self.pair_head = pair_head
        self.single_head, self.dropout, self.model_path = single_head, dropout, model_path
        self.mlm_head_source: str | None = None  # for the record: where the MLM head's weights came from
        hidden = encoder.config.hidden_size
        self.width = hidden * 4 if pooling == "last4_mean" else hidden
        if pooling == "last4_mean" and encoder.config.num_hidden_layers + 1 < 4:
            raise ValueError("pooling 'last4_mean' needs an encoder with at least 3 layers")
        self.heads = nn.ModuleDict()
        for spec in tasks:
            self.heads[spec.name] = HEADS[spec.kind](self, spec)

    @property
    def pair_mode(self) -> str:
        return "cross" if self.pair_head == "cross" else "bi"

    def _trainable_split(self) -> tuple[list[nn.Parameter], dict[str, list[nn.Parameter]]]:
        """(shared, per-task) trainable parameters. Called every step: the module tree is walked
        once, and the split is rebuilt only when a freezing schedule changes `requires_grad`."""
        if not hasattr(self, "_parameter_groups"):
            encoder = list(self.encoder.parameters())
            shared = {id(p) for p in encoder}  # a tied MLM decoder is the encoder's embedding: shared
            self._parameter_groups = (encoder, {task: [p for p in head.parameters() if id(p) not in shared]
                                                for task, head in self.heads.items()})
            self._split_key, self._split = None, None
        encoder, heads = self._parameter_groups
        key = tuple(p.requires_grad for p in encoder) + tuple(p.requires_grad for ps in heads.values() for p in ps)
        if key != self._split_key:
            self._split_key = key
            self._split = ([p for p in encoder if p.requires_grad],
                           {task: [p for p in ps if p.requires_grad] for task, ps in heads.items()})
        return self._split

    def parameters_changed(self) -> None:
        """Modules were added to the model (adapters): the shared/per-task split is found again."""
        if hasattr(self, "_parameter_groups"):
            del self._parameter_groups

    def shared_parameters(self) -> list[nn.Parameter]:
        return self._trainable_split()[0]

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        return self._trainable_split()[1]

    def input_embeddings(self, input_ids: Tensor) -> Tensor:
        return self.encoder.get_input_embeddings()(input_ids)

    def hidden_states(self, batch: dict[str, Tensor], inputs_embeds: Tensor | None = None):
        kwargs = {"attention_mask": batch["attention_mask"],
                  "output_hidden_states": self.pooling == "last4_mean"}
        if "token_type_ids" in batch:
            kwargs["token_type_ids"] = batch["token_type_ids"]
        if inputs_embeds is None:
            kwargs["input_ids"] = batch["input_ids"]
        else:
            kwargs["inputs_embeds"] = inputs_embeds
        return self.encoder(**kwargs)

    def encode(self, batch: dict[str, Tensor], inputs_embeds: Tensor | None = None) -> Tensor:
        return pool(self.pooling, self.hidden_states(batch, inputs_embeds), batch["attention_mask"])

    def logits(self, task: str, pooled: Tensor) -> Tensor:
        spec, head = self.specs[task], self.heads[task]
        if spec.kind.is_pair and self.pair_mode == "bi":
            u, v = pooled.chunk(2)  # one encoder call held both sides, side A first
            return head(u, v)
        return head(pooled)

    def task_outputs(self, task: str, batch: dict[str, Tensor], inputs_embeds: Tensor | None = None):
        """(logits, the labels they are scored against, the pooled vectors, what the head read)."""
        spec = self.specs[task]
        labels = batch.get("labels")
        if not spec.kind.is_token_level:
            pooled = self.encode(batch, inputs_embeds)
            return self.logits(task, pooled), labels, pooled, pooled
        outputs = self.hidden_states(batch, inputs_embeds)
        hidden = outputs.last_hidden_state
        pooled = _masked_mean(hidden, batch["attention_mask"])
        if spec.kind is TaskKind.MLM:
            scored = labels != IGNORE
            return self.heads[task](hidden[scored]), labels[scored], pooled, hidden
        return self.heads[task](hidden), labels, pooled, hidden

    def forward(self, task: str, batch: dict[str, Tensor], inputs_embeds: Tensor | None = None) -> TaskOutput:
        logits, labels, pooled, representation = self.task_outputs(task, batch, inputs_embeds)
        spec = self.specs[task]
        return TaskOutput(task_loss(spec, logits, labels), predictions(spec, logits.detach()), pooled, logits,
                          representation)

    @torch.no_grad()
    def predict(self, task: str, batch: dict[str, Tensor]) -> tuple[list, list | None]:
        """Per example: the prediction and the gold label (None without labels). Token kinds give
        lists over the scored positions; MLM gives (predicted id, negative log-likelihood) pairs."""
        spec = self.specs[task]
        logits, labels, _, _ = self.task_outputs(task, batch)
        predicted = predictions(spec, logits)
        if not spec.kind.is_token_level:
            return predicted.cpu().tolist(), None if labels is None else labels.cpu().tolist()
        if spec.kind is TaskKind.MLM:  # logits are the masked positions', example after example
            nll = F.cross_entropy(logits.float(), labels, reduction="none")
            counts = (batch["labels"] != IGNORE).sum(1).tolist()
            pairs = list(zip(predicted.cpu().tolist(), nll.cpu().tolist()))
            golds, ends = labels.cpu().tolist(), list(itertools.accumulate(counts))
            return ([pairs[e - n:e] for n, e in zip(counts, ends)], [golds[e - n:e] for n, e in zip(counts, ends)])
        keep = (labels != IGNORE).cpu()
        predicted, labels = predicted.cpu(), labels.cpu()
        return ([p[k].tolist() for p, k in zip(predicted, keep)], [g[k].tolist() for g, k in zip(labels, keep)])

    def outputs_closure(self, task: str, batch: dict[str, Tensor]) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """(loss, logits) as a function of the input word embeddings (for adversarial regularisers)."""
        def outputs(embeddings: Tensor) -> tuple[Tensor, Tensor]:
            output = self.forward(task, batch, inputs_embeds=embeddings)
            return output.loss, output.logits
        return outputs
