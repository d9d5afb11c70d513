"""Patch features: two backbone stages, 3x3 local aggregation, upsampled onto one grid.

PatchCore's recipe: a stride-8 stage for localisation and a stride-16 stage for context, each
averaged over a 3x3 neighbourhood so a patch vector describes its surroundings, then the coarse
map is upsampled and concatenated. Optional normalisations make the vectors less sensitive to
global light changes, which matters when the line's lighting drifts.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from engine.backbones import DEFAULT_BACKBONE, IMAGENET_MEAN, IMAGENET_STD, build_feature_extractor

Normalization = Literal["none", "instance", "layer"]


class PatchFeatureExtractor(nn.Module):
    """RGB batch [B,3,H,W] in [0,1] -> patch features [B,D,H/8,W/8]."""

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        pool_size: int = 3,
        normalization: Normalization = "none",
        align_coarse: bool = True,
    ) -> None:
        super().__init__()
        if normalization not in ("none", "instance", "layer"):
            raise ValueError(
                f"normalization must be none, instance or layer, not {normalization!r}"
            )
        self.backbone_name = backbone
        self.network = build_feature_extractor(backbone)
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2)
        self.normalization = normalization
        #: False: the pre-alignment upsampling (half a stride-8 cell off), for banks built so
        self.align_coarse = align_coarse
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.eval()

    @property
    def dim(self) -> int:
        return int(sum(self.network.feature_info.channels()))

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B,3,H,W], got {tuple(images.shape)}")
        x = (images - self.mean) / self.std
        fine, *coarser = (self.pool(stage) for stage in self.network(x))
        strides = self.network.feature_info.reduction()
        stages = [fine]
        for stride, coarse in zip(strides[1:], coarser, strict=True):
            if self.align_coarse:
                coarse = upsample_onto_fine(coarse, fine.shape[-2:], stride // strides[0])
            else:
                coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear",
                                       align_corners=False)
            stages.append(coarse)
        if self.normalization == "instance":
            stages = [F.instance_norm(stage) for stage in stages]
        elif self.normalization == "layer":
            stages = [F.layer_norm(stage.movedim(1, -1), stage.shape[1:2]).movedim(-1, 1)
                      for stage in stages]
        return torch.cat(stages, dim=1)


def upsample_onto_fine(coarse: torch.Tensor, size: tuple[int, int], ratio: int = 2
                       ) -> torch.Tensor:
    """Stride-16 map [B,C,h,w] onto the stride-8 grid ``size``: coarse cell j on fine cell 2j.

    ``ratio`` is the coarse stage's stride over the fine one's (4 for a stride-32 stage); the
    rule below holds for any ratio with ``ratio`` in place of 2.

    Both stages pad symmetrically, so coarse cell j and fine cell 2j are centred on the same
    pixel (16j); fine cell i therefore reads the coarse map at i / 2 (bilinear, last cell held).
    ``F.interpolate(..., align_corners=False)`` reads it at i / 2 - 1/4 instead, which put the
    context half of every patch vector half a fine cell (4 px) up and left of its fine half.
    """
    out = coarse
    for dim, n in ((2, int(size[0])), (3, int(size[1]))):
        m = out.shape[dim]
        src = (torch.arange(n, dtype=torch.float32, device=out.device) / ratio).clamp(max=m - 1)
        lo = src.floor().long()
        hi = (lo + 1).clamp(max=m - 1)
        w = (src - lo).to(out.dtype)
        shape = [1, 1, 1, 1]
        shape[dim] = n
        w = w.view(shape)
        out = out.index_select(dim, lo) * (1 - w) + out.index_select(dim, hi) * w
    return out
