"""Devices: which one to train on, and the peak throughput MFU is measured against."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from blueberry.errors import ConfigError

# Dense bf16 tensor-core peak FLOP/s (no sparsity), from the vendors' datasheets. Order matters:
# the first name contained in torch's device name wins, so specific names come before general ones.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("RTX 4090", 165.2e12),  # fp32 accumulate, as PyTorch's bf16 matmuls use
    ("RTX 3090", 71e12),
)


# Short names for planning (`blueberry-scale plan --gpu h100`).
GPU_ALIASES = {"h100": "H100", "h100-pcie": "H100 PCIe", "h200": "H200", "b200": "B200", "a100": "A100",
               "l40s": "L40S", "l4": "L4", "a10g": "A10G", "4090": "RTX 4090", "3090": "RTX 3090"}


def gpu_peak_flops(alias: str) -> float:
    """Peak bf16 FLOP/s of a GPU named by its short name."""
    key = GPU_ALIASES.get(alias.lower())
    if key is None:
        raise ConfigError(f"unknown GPU {alias!r}: use one of {', '.join(GPU_ALIASES)}")
    return dict(PEAK_BF16_FLOPS)[key]


def resolve_device(name: str) -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but no CUDA device is available: use --device cpu")
    return device


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, else what `platform` knows)."""
    import platform

    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware_info(device: torch.device) -> dict[str, str]:
    """What a run's speed depends on: GPU model ("none" off CUDA), CPU model, torch and CUDA versions
    (the speedrun board records them with every run)."""
    return {"gpu": device_name(device) if device.type == "cuda" else "none", "cpu": cpu_model(),
            "torch": torch.__version__, "cuda": torch.version.cuda or "none"}


def peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of a known GPU; None for CPUs and GPUs not in the table (MFU is then omitted)."""
    if device.type != "cuda":
        return None
    name = device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


def autocast(device: torch.device, precision: str) -> Any:
    """bf16 autocast for `precision` bf16, or auto on CUDA; otherwise a context that changes nothing."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
