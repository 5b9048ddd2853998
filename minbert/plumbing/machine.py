"""The machine a run uses: device, precision policy and autocast, seeding, moving batches.

Precision: bf16 autocast where it is native, fp16 with loss scaling on older GPUs, else fp32.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
# What "auto" becomes; a training loop accepts only these.
RESOLVED_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
# The --precision help of every script that trains.
PRECISION_HELP = ("auto: bf16 autocast on GPUs of compute capability ≥ 8.0 (A100, H100, RTX 30xx/40xx) and on "
                  "CPUs with native bf16 (AVX512-BF16/AMX); fp16 autocast with gradient scaling on capability 7.x "
                  "(V100, T4); fp32 elsewhere. On capability ≥ 8.0 fp32 matmuls use TF32. Weights and optimiser "
                  "state stay fp32 in every case")
# How the banner names each precision.
PRECISION_NAMES = {"bf16": "bf16 autocast", "fp16": "fp16 autocast with gradient scaling", "fp32": "fp32"}
# Ampere (8.0) introduced bf16 tensor cores (and TF32); Volta (7.0) fp16 ones. Below 8.0 torch
# still runs bf16, emulated: torch.cuda.is_bf16_supported() says True there unless asked
# including_emulation=False, so it cannot decide "auto".
NATIVE_BF16_CAPABILITY = (8, 0)
FP16_TENSOR_CORE_CAPABILITY = (7, 0)
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


def machine_description() -> str:
    """The hardware a run trains on, e.g. "AMD EPYC (AVX512-BF16), 2 CPUs" (the GPU's name under CUDA).

    The bf16 support is part of it: one CPU model name comes with and without AVX512-BF16, and
    `--precision auto` then trains in bf16 on one and in the slower fp32 on the other.
    """
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = cpu_info("model name") or platform.processor() or platform.machine()
    return f"{model} ({native_bf16_label(cpu_flags())}), {os.cpu_count()} CPUs"


def choose_precision(requested: str, device_type: str, capability: tuple[int, int] | None = None,
                     cpu_native_bf16: bool = False) -> tuple[str, str]:
    """(precision, why) for `--precision requested` on a device: the whole policy, free of hardware reads.

    `capability` is a CUDA device's compute capability (None elsewhere); `cpu_native_bf16` says
    whether a CPU has AVX512-BF16 or AMX-BF16. `auto` takes bf16 where it runs natively (CUDA
    8.0 and later, such CPUs), fp16 with gradient scaling on CUDA 7.x (fp16 tensor cores, no bf16
    ones), else fp32. An explicit request is honoured even where it is not native (slow, but a
    user may want to check numerics); the reason then says so.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    if device_type == "cuda":
        if capability is None:
            raise ValueError("a CUDA device's compute capability is needed to choose its precision")
        name = f"compute capability {capability[0]}.{capability[1]}"
        native = {"bf16": capability >= NATIVE_BF16_CAPABILITY, "fp16": capability >= FP16_TENSOR_CORE_CAPABILITY}
        bf16_from = f"{NATIVE_BF16_CAPABILITY[0]}.{NATIVE_BF16_CAPABILITY[1]}"
        has = {"bf16": f"{name} has bf16 tensor cores",
               "fp16": f"{name} has fp16 tensor cores but no bf16 ones, which need {bf16_from}",
               "fp32": f"{name} has no bf16 or fp16 tensor cores"}
    elif device_type == "cpu":
        name = "the CPU"
        native = {"bf16": cpu_native_bf16, "fp16": False}
        has = {"bf16": "the CPU has native bf16 (AVX512-BF16/AMX)",
               "fp32": "the CPU has no native bf16 (AVX512-BF16/AMX)"}
    else:
        name = f"device {device_type}"
        native = {"bf16": False, "fp16": False}
        has = {"fp32": f"half precision is only chosen on CUDA devices and CPUs, not on {device_type}"}
    best = "bf16" if native["bf16"] else "fp16" if native["fp16"] else "fp32"
    tf32 = "; fp32 matmuls in TF32" if tf32_applies(device_type, capability) else ""
    if requested == "auto":
        return best, f"auto: {PRECISION_NAMES[best]}, as {has[best]}{tf32}"
    if requested == "fp32" or native[requested]:
        return requested, f"--precision {requested} as requested, on {name}{tf32}"
    return requested, (f"--precision {requested} as requested, though {name} does not run it natively "
                       f"(may be slower than fp32){tf32}")


def tf32_applies(device_type: str, capability: tuple[int, int] | None) -> bool:
    """Whether fp32 matmuls may run in TF32: CUDA devices of compute capability 8.0 and later."""
    return device_type == "cuda" and capability is not None and capability >= NATIVE_BF16_CAPABILITY


def device_capability(device: torch.device) -> tuple[int, int] | None:
    """A CUDA device's compute capability; None for other devices."""
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


def precision_choice(requested: str, device: torch.device) -> tuple[str, str]:
    """`choose_precision` for this machine's `device`: (precision, why)."""
    return choose_precision(requested, device.type, device_capability(device),
                            device.type == "cpu" and cpu_has_native_bf16())


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision `--precision requested` runs in on `device` (see `choose_precision`)."""
    return precision_choice(requested, device)[0]


def allow_tf32(device: torch.device) -> bool:
    """Let fp32 matmuls and convolutions use TF32 on CUDA 8.0 and later (torch's default is full fp32).

    TF32 keeps fp32's range with a 10-bit mantissa, the precision bf16 autocast already accepts
    for the matmuls. Returns whether it was switched on.
    """
    if not tf32_applies(device.type, device_capability(device)):
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The forward-pass context of a precision: bf16 or fp16 autocast, or nothing for fp32.

    Autocast runs matmuls and attention in half precision while parameters, their gradients and
    optimiser state stay fp32 (the "master weights"); callers cast outputs to fp32 before losses.
    fp16 training also needs a gradient scaler (`grad_scaler`).
    """
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    if precision == "fp32":
        return contextlib.nullcontext()
    raise ValueError(f"precision must be resolved to one of {', '.join(RESOLVED_PRECISIONS)} first, got {precision!r}")


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """The loss scaler fp16 training needs, None for fp32 and bf16.

    fp16 has 5 exponent bits: without scaling, small gradients flush to zero in the backward
    pass. The scaler multiplies the loss, unscales the gradients before the update and skips an
    update whose gradients overflowed, lowering the scale (bf16 has fp32's range: no scaler).
    """
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


class DeviceError(RuntimeError):
    """The requested device is not available on this machine."""


def pick_device(device: str = "auto", use_gpu: bool = False) -> torch.device:
    """`auto` takes CUDA when present; `--use_gpu` (the course's flag) asks for it explicitly."""
    if use_gpu and device == "auto":
        device = "cuda"
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda / --use_gpu was given but no CUDA device is available; use --device cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) — the one piece of global state we set."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type != "cuda":
        return batch
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
