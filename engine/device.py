"""Device choice in one place, so every module agrees on where tensors live."""

from __future__ import annotations

import torch


def pick_device(preferred: str | None = None) -> torch.device:
    """CUDA when present, CPU otherwise; an explicit ``preferred`` wins when it is usable."""
    if preferred:
        device = torch.device(preferred)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {preferred!r} was requested but CUDA is not available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
