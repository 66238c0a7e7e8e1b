"""Shared encoder + pooling + one head per task.

Pair heads (the CS224N report's options, SBERT's feature sets):
- `cosine` (option 1): a learned scale and offset on cos(u, v);
- `concat` (option 2): [u; v; |u-v|] -> linear;
- `concat_product` (option 3): [u; v; |u-v|; u*v] -> linear;
- `cross`: the pair encoded as one input ([CLS] a [SEP] b [SEP]) -> pooled -> linear.
Bi-encoder pairs are encoded in one batched encoder call (both sides stacked).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.spec import TaskKind, TaskSpec

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


def task_loss(spec: TaskSpec, logits: Tensor, labels: Tensor) -> Tensor:
    if spec.kind is TaskKind.PAIR_REGRESSION:
        return F.mse_loss(logits.squeeze(-1), labels)
    if spec.num_labels == 1:
        return F.binary_cross_entropy_with_logits(logits.squeeze(-1), labels)
    return F.cross_entropy(logits, labels)


def predictions(spec: TaskSpec, logits: Tensor) -> Tensor:
    if spec.kind is TaskKind.PAIR_REGRESSION:
        return logits.squeeze(-1)
    if spec.num_labels == 1:
        return (logits.squeeze(-1) > 0).long()
    return logits.argmax(-1)


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, tasks: list[TaskSpec], pooling: str, pair_head: str,
                 single_head: str = "linear", dropout: float = 0.1):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}")
        self.encoder = encoder
        self.specs = {t.name: t for t in tasks}
        self.pooling = pooling
        self.pair_head = pair_head
        hidden = encoder.config.hidden_size
        width = hidden * 4 if pooling == "last4_mean" else hidden
        if pooling == "last4_mean" and encoder.config.num_hidden_layers + 1 < 4:
            raise ValueError("pooling 'last4_mean' needs an encoder with at least 3 layers")
        self.heads = nn.ModuleDict()
        for spec in tasks:
            if pair_head == "cosine" and spec.kind.is_pair:
                # cos in [-1, 1]: a learned scale and offset, starting at the label range or as a logit.
                low, high = spec.label_range or (-5.0, 5.0)
                self.heads[spec.name] = CosineHead((high - low) / 2, (low + high) / 2)
                continue
            if spec.kind.is_pair and pair_head != "cross":
                head = FeatureHead(pair_head == "concat_product", width, spec.num_labels, dropout, single_head)
            else:
                head = _classifier(single_head, width, spec.num_labels, dropout)
            self.heads[spec.name] = ToRange(head, *spec.label_range) if spec.label_range else head

    @property
    def pair_mode(self) -> str:
        return "cross" if self.pair_head == "cross" else "bi"

    def _trainable_split(self) -> tuple[list[nn.Parameter], dict[str, list[nn.Parameter]]]:
        """(shared, per-task) trainable parameters. Called every step: the module tree is walked
        once, and the split is rebuilt only when a freezing schedule changes `requires_grad`."""
        if not hasattr(self, "_parameter_groups"):
            self._parameter_groups = (list(self.encoder.parameters()),
                                      {task: list(head.parameters()) for task, head in self.heads.items()})
            self._split_key, self._split = None, None
        encoder, heads = self._parameter_groups
        key = tuple(p.requires_grad for p in encoder) + tuple(p.requires_grad for ps in heads.values() for p in ps)
        if key != self._split_key:
            self._split_key = key
            self._split = ([p for p in encoder if p.requires_grad],
                           {task: [p for p in ps if p.requires_grad] for task, ps in heads.items()})
        return self._split

    def shared_parameters(self) -> list[nn.Parameter]:
        return self._trainable_split()[0]

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        return self._trainable_split()[1]

    def input_embeddings(self, input_ids: Tensor) -> Tensor:
        return self.encoder.get_input_embeddings()(input_ids)

    def encode(self, batch: dict[str, Tensor], inputs_embeds: Tensor | None = None) -> Tensor:
        kwargs = {"attention_mask": batch["attention_mask"],
                  "output_hidden_states": self.pooling == "last4_mean"}
        if "token_type_ids" in batch:
            kwargs["token_type_ids"] = batch["token_type_ids"]
        if inputs_embeds is None:
            kwargs["input_ids"] = batch["input_ids"]
        else:
            kwargs["inputs_embeds"] = inputs_embeds
        return pool(self.pooling, self.encoder(**kwargs), batch["attention_mask"])

    def logits(self, task: str, pooled: Tensor) -> Tensor:
        spec, head = self.specs[task], self.heads[task]
        if spec.kind.is_pair and self.pair_mode == "bi":
            u, v = pooled.chunk(2)  # one encoder call held both sides, side A first
            return head(u, v)
        return head(pooled)

    def forward(self, task: str, batch: dict[str, Tensor], inputs_embeds: Tensor | None = None) -> TaskOutput:
        pooled = self.encode(batch, inputs_embeds)
        logits = self.logits(task, pooled)
        spec = self.specs[task]
        return TaskOutput(task_loss(spec, logits, batch["labels"]), predictions(spec, logits.detach()), pooled, logits)

    def outputs_closure(self, task: str, batch: dict[str, Tensor]) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """(loss, logits) as a function of the input word embeddings (for adversarial regularisers)."""
        def outputs(embeddings: Tensor) -> tuple[Tensor, Tensor]:
            output = self.forward(task, batch, inputs_embeds=embeddings)
            return output.loss, output.logits
        return outputs
