"""One device resolver for every command (eval, sweeps, bench, training): a device string becomes a
``torch.device``, or a one-line error saying why it cannot be used here."""

from __future__ import annotations

import torch

from moeroute.core.errors import MoeRouteError

DEVICE_HELP = "cpu, cuda, cuda:N, mps or auto (cuda if available, else cpu)"


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda[:i]``, ``mps`` or ``auto``; asking for an accelerator that is absent is a clear error."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise MoeRouteError(f"unknown device {name!r} ({DEVICE_HELP})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise MoeRouteError(f"device {name}: CUDA is not available (torch {torch.__version__} is {build}, or no GPU is visible)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MoeRouteError(f"device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise MoeRouteError(f"device {name}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise MoeRouteError(f"unsupported device {name!r} ({DEVICE_HELP})")
    return device


def device_name(device: torch.device) -> str:
    """A human name of the device for result rows (the GPU's model, or the CPU)."""
    import platform

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or device.type
