"""Compute precision: fp32, or bf16 autocast where the hardware runs bf16 matmuls natively."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
# The --precision help of every script that trains.
PRECISION_HELP = ("auto: bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), fp32 elsewhere; "
                  "weights and optimiser state stay fp32 either way")
# CPU flags of native bf16 dot products (AVX512-BF16, AMX). Without them torch emulates bf16
# matmuls and they run slower than fp32.
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# How reports name those flags, in this order.
NATIVE_BF16_NAMES = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX"}


def cpu_info(key: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The kernel's value of `key` ("flags", "model name") for the first CPU; None where it is not reported."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The feature flags the kernel reports for this CPU (empty where /proc/cpuinfo does not exist)."""
    return frozenset((cpu_info("flags", cpuinfo) or "").split())


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX-BF16."""
    return bool(cpu_flags() & NATIVE_BF16_CPU_FLAGS)


def native_bf16_label(flags: frozenset[str]) -> str:
    """"AVX512-BF16, AMX", "AVX512-BF16" or "no native bf16": what `--precision auto` will use on these flags."""
    names = [name for flag, name in NATIVE_BF16_NAMES.items() if flag in flags]
    return ", ".join(names) if names else "no native bf16"


def resolve_precision(requested: str, device: torch.device) -> str:
    """`auto` → "bf16" on CUDA devices and CPUs that run bf16 natively, "fp32" elsewhere.

    An explicit "bf16" is honoured even where it is emulated (slow, but a user may want to check
    numerics); "fp32" is always honoured.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The forward-pass context of a precision: bf16 autocast, or nothing for fp32.

    Autocast runs matmuls and attention in bf16 while parameters, their gradients and optimiser
    state stay fp32 (the "master weights"); callers cast outputs to fp32 before losses.
    """
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp32":
        return contextlib.nullcontext()
    raise ValueError(f"precision must be resolved to fp32 or bf16 first, got {precision!r}")
