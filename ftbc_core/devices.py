"""The device a run uses: named by the caller (the CLI resolves ``--device auto``, the dashboard offers what
exists); the core checks the name and never picks a device itself."""

from __future__ import annotations

import torch

__all__ = ["check_device"]


def check_device(name: str | torch.device) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` -> a torch device; a GPU that is not there is a one-line error."""
    if isinstance(name, str) and name.strip().lower() == "auto":
        raise ValueError("the core does not pick a device: name it (cpu or cuda); `ftbc --device auto` resolves it")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}: use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was requested but no GPU is available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r} is not supported: use cpu or cuda")
    return device
