"""Supervised contrastive term in the style of SimCSE: Gao, Yao & Chen (2021), "SimCSE: Simple
Contrastive Learning of Sentence Embeddings", EMNLP (the supervised objective, eq. 5).

On a pair task in bi-encoder mode, each positive pair (a_i, b_i) — a paraphrase, or an STS pair
scored at least `sts_threshold` — is an anchor a_i whose positive is b_i. The candidates are the
second sentences b_j of the batch (in-batch negatives); with `hard_negatives` they include the
second sentences of negative pairs, which differ from their own first sentence in one slot, so
they are the hardest negatives there are. With s the cosine similarity and tau the temperature,

    L = -1/|P| sum_{i in P} log( exp(s(a_i, b_i)/tau) / sum_{j in C} exp(s(a_i, b_j)/tau) ),

computed as one B x B cosine matrix and one cross-entropy over the pooled vectors the pair task
already produced: no extra encoder pass. The term added to the task loss is weight * L.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from mtlbench.strategies.base import Regularizer
from mtlbench.strategies.registry import register
from mtlbench.tasks.errors import UserError
from mtlbench.tasks.spec import TaskKind
from torch import Tensor


def positive_pairs(labels: Tensor, kind: TaskKind, sts_threshold: float) -> Tensor:
    """Boolean mask of the batch's positive pairs."""
    if kind is TaskKind.PAIR_REGRESSION:
        return labels >= sts_threshold
    return labels > 0.5


def supervised_contrastive_loss(first: Tensor, second: Tensor, positive: Tensor, temperature: float = 0.05,
                                hard_negatives: bool = True) -> Tensor:
    """The loss above for B first-side and B second-side vectors; 0 when no pair is positive."""
    if not bool(positive.any()):
        return first.sum() * 0.0  # keeps the graph shape; contributes nothing
    similarity = F.normalize(first, dim=-1) @ F.normalize(second, dim=-1).T / temperature  # B x B
    candidates = torch.ones_like(positive) if hard_negatives else positive
    logits = similarity[positive].masked_fill(~candidates[None, :], float("-inf"))
    targets = positive.nonzero().squeeze(-1)  # anchor i's positive is column i
    return F.cross_entropy(logits, targets)


@register("regularizer", "contrastive")
class SupervisedContrastive(Regularizer):
    """Supervised SimCSE term (Gao et al., 2021) on pair tasks: in-batch negatives, one B x B matrix."""

    needs_bi_encoder_pairs = True

    @dataclass
    class Options:
        weight: float = 0.1  # lambda
        temperature: float = 0.05  # SimCSE's value
        hard_negatives: bool = True
        sts_threshold: float = 4.0  # STS pairs scored at least this are positives

        def __post_init__(self):
            if self.temperature <= 0:
                raise ValueError(f"temperature must be > 0, got {self.temperature}")
            if self.weight < 0:
                raise ValueError(f"weight must be >= 0, got {self.weight}")

    def terms(self, step):
        if step.spec is None or not step.spec.kind.is_pair:
            return {}
        batch = step.labels.shape[0]
        if step.pooled.shape[0] != 2 * batch:
            raise UserError(f"regularizer 'contrastive' needs a bi-encoder pair head (task '{step.task}' "
                            "encodes each pair as one input: pair_head = 'cross')")
        positive = positive_pairs(step.labels, step.spec.kind, self.options.sts_threshold)
        loss = supervised_contrastive_loss(step.pooled[:batch], step.pooled[batch:], positive,
                                           self.options.temperature, self.options.hard_negatives)
        return {"contrastive": self.options.weight * loss}
