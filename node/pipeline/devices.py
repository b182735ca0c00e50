"""Which precisions a torch device computes a stage in: what a worker advertises at registration (PROTOCOL I8)."""

from __future__ import annotations

import torch

from ledger.errors import StagewiseError


class DeviceError(StagewiseError):
    """A --device torch cannot compute on here."""


def supported_precisions(device: str) -> tuple[str, ...]:
    """The precisions `device` computes natively: every one on a CPU (bf16 and fp16 are emulated there, slowly but
    exactly as declared), fp32 and fp16 on a CUDA or ROCm device, bf16 too where it has bf16 units (Ampere and
    later, CDNA2 and later). DeviceError when torch has no such device."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise DeviceError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if kind == "cpu":
        return ("fp32", "bf16", "fp16")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"torch sees no CUDA or ROCm device for --device {device}")
        return ("fp32", "bf16", "fp16") if torch.cuda.is_bf16_supported() else ("fp32", "fp16")
    return ("fp32",)
