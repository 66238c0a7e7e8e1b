"""Model FLOPs of training, and model FLOPs utilisation (MFU) against the accelerator's peak.

Per token of a padded sequence of length L, forward and backward: 6 N + 12 n_layers d L, with N the
weights a token goes through (every parameter but the embedding tables) and the second term the
attention scores and weighted values (PaLM, Chowdhery et al. 2022, appendix B). Model FLOPs count the
useful work on the batch only: a regulariser's extra passes and a combiner's per-task backwards are
what a recipe costs on top, which is the point of comparing MFU between recipes. Padded positions are
counted (the encoder computes them), the MLM decoder tied to the word embeddings is not.

MFU divides by the dense bf16/fp16 tensor-core peak of a GPU known here (below) or by
`MTLBENCH_PEAK_TFLOPS`; on a CPU, or an unknown GPU, it is left out.
"""

from __future__ import annotations

import os

import torch

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets; the first
# name that the device name contains wins (so the PCIe H100 before the SXM one).
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
                    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0))


def per_token(model) -> tuple[float, float]:
    """(6 N, 12 n_layers d): a token of a length-L sequence costs 6 N + 12 n_layers d L FLOPs."""
    weights = sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name)
    config = model.encoder.config
    return 6.0 * weights, 12.0 * config.num_hidden_layers * config.hidden_size


def batch_flops(costs: tuple[float, float], input_ids: torch.Tensor) -> float:
    """Model FLOPs of training on one collated batch (rows x padded length; bi-encoder pairs: 2B rows)."""
    rows, length = input_ids.shape
    dense, attention = costs
    return rows * length * (dense + attention * length)


def peak_tflops(device: torch.device, precision: str) -> float | None:
    """The accelerator's peak for this precision, if known (`MTLBENCH_PEAK_TFLOPS` overrides)."""
    if os.environ.get("MTLBENCH_PEAK_TFLOPS"):
        return float(os.environ["MTLBENCH_PEAK_TFLOPS"])
    if device.type != "cuda" or precision not in ("bf16", "fp16"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def summary(flops: float, seconds: float, device: torch.device, precision: str) -> dict:
    achieved = flops / seconds / 1e12 if seconds else float("nan")
    peak = peak_tflops(device, precision)
    return {"model_flops": flops, "model_tflops_per_second": achieved, "peak_tflops": peak,
            "mfu": achieved / peak if peak else None}
