"""How fast training runs against what the machine can do: the matmul peak, and model FLOPs on real tokens."""

from __future__ import annotations

import time

import torch

from minbert.model import BertConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# A square matmul large enough to run at the machine's rate, small enough to time in a second.
PEAK_SIZE = 2048


def matmul_peak(device: torch.device, precision: str, seconds: float = 0.6, windows: int = 3) -> float:
    """FLOP/s of torch.mm on PEAK_SIZE² matrices in the precision's dtype, measured now on this device: the
    best of `windows` windows that share `seconds`. One window alone is at the mercy of a moment when the
    system takes a core, which halves the rate on 2 cores (results/README.md, "Quick check"); a peak is
    what the machine reaches."""
    dtype = DTYPES[precision]
    # A generator of its own: measuring must not move the run's random stream.
    generator = torch.Generator(device).manual_seed(0)
    a = torch.randn(PEAK_SIZE, PEAK_SIZE, device=device, generator=generator).to(dtype)
    b = torch.randn(PEAK_SIZE, PEAK_SIZE, device=device, generator=generator).to(dtype)
    torch.mm(a, b)
    return max(_matmul_rate(a, b, seconds / windows) for _ in range(windows))


def _matmul_rate(a: torch.Tensor, b: torch.Tensor, seconds: float) -> float:
    """FLOP/s of back-to-back a @ b over at least `seconds` (and at least one product)."""
    runs, start = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        runs += 1
        if a.device.type == "cuda":
            torch.cuda.synchronize(a.device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * a.shape[0] * a.shape[1] * b.shape[1] * runs / elapsed


def training_flops_per_token(config: BertConfig) -> float:
    """Model FLOPs to train on one real token: 3 × the forward of the dense layers (attention scores left out).

    Per layer a token passes the query/key/value and output projections (4·H² multiply-adds) and
    the feed-forward block (2·H·I); the backward pass costs twice the forward.
    """
    h, inter = config.hidden_size, config.intermediate_size
    return 3 * config.num_hidden_layers * 2 * (4 * h * h + 2 * h * inter)


def epoch_throughput(config: BertConfig, tokens: int, seconds: float, peak: float | None) -> dict[str, float | int]:
    """An epoch's real tokens, its model FLOP rate and, with a measured peak, the share of it."""
    out: dict[str, float | int] = {"train_tokens": tokens}
    if seconds > 0:
        flops = training_flops_per_token(config) * tokens / seconds
        out["model_gflops_per_s"] = round(flops / 1e9, 1)
        if peak:
            out["matmul_peak_gflops_per_s"] = round(peak / 1e9, 1)
            out["of_peak"] = round(flops / peak, 4)
    return out
