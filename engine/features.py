"""Patch features: two backbone stages, 3x3 local aggregation, upsampled onto one grid.

PatchCore's recipe: a stride-8 stage for localisation and a stride-16 stage for context, each
averaged over a 3x3 neighbourhood so a patch vector describes its surroundings, then the coarse
map is upsampled and concatenated. The stride-8 block can be down-weighted (``fine_weight``: its
share of every squared distance) or left out: with few shots its texture detail varies between
good parts nearly as much as a defect changes it (README "How the detector works"). Optional
normalisations make the vectors less sensitive to global light changes, which matters when the
line's lighting drifts.

Two of them need statistics of the training patches, which an extractor never sees:
``normalization="batch"`` and style alignment (AdaIN). They live in :class:`FeatureAlignment`,
built by the model from the :class:`ChannelStats` of its shots and applied after the extractor,
so the export core (engine.export.core) can hold the same module with its statistics as buffers.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from engine.backbones import DEFAULT_BACKBONE, IMAGENET_MEAN, IMAGENET_STD, build_feature_extractor

#: what the extractor itself does to each image's stages (no training data needed)
ImageNormalization = Literal["none", "instance", "layer"]
#: a model's choice: the above, or "batch" (every channel standardized with the training
#: patches' statistics, see :class:`FeatureAlignment`)
Normalization = Literal["none", "instance", "layer", "batch"]
NORMALIZATIONS: tuple[str, ...] = ("none", "instance", "layer", "batch")
#: variance floor of every per-channel statistic (torch's instance norm uses the same): a channel
#: that hardly varies over an image would otherwise be blown up into noise by the division
STATS_EPS = 1e-5


class PatchFeatureExtractor(nn.Module):
    """RGB batch [B,3,H,W] in [0,1] -> patch features [B,D,H/8,W/8]."""

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        pool_size: int = 3,
        normalization: ImageNormalization = "none",
        align_coarse: bool = True,
        fine_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(fine_weight) <= 1.0:
            raise ValueError(f"fine_weight must be in [0, 1], got {fine_weight!r}")
        if normalization not in ("none", "instance", "layer"):
            raise ValueError(
                f"normalization must be none, instance or layer, not {normalization!r} (batch "
                "needs training statistics: FeatureAlignment applies it after the extractor)"
            )
        self.backbone_name = backbone
        self.network = build_feature_extractor(backbone)
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2)
        self.normalization = normalization
        #: the stride-8 stage's share of every squared distance (its block is scaled by the
        #: square root); 0 leaves the block out, and the grid stays the stride-8 one
        self.fine_weight = float(fine_weight)
        #: False: the pre-alignment upsampling (half a stride-8 cell off), for banks built so
        self.align_coarse = align_coarse
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.eval()

    @property
    def dim(self) -> int:
        channels = self.network.feature_info.channels()
        return int(sum(channels[1:] if self.fine_weight == 0 else channels))

    def channel_gain(self) -> torch.Tensor | None:
        """[D] the factor each output channel carries from ``fine_weight``, or None when all
        are 1 (a weight of 0 drops the block rather than scaling it)."""
        if self.fine_weight in (0, 1):
            return None
        gain = torch.ones(self.dim)
        gain[: self.network.feature_info.channels()[0]] = self.fine_weight ** 0.5
        return gain

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
        if self.fine_weight == 0:
            stages = stages[1:]
        elif self.fine_weight != 1:
            stages[0] = stages[0] * self.fine_weight ** 0.5
        return torch.cat(stages, dim=1)


class ChannelStats(NamedTuple):
    """Per-channel mean and std ``[D]`` of patch vectors, the std floored by ``STATS_EPS``."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, vectors: torch.Tensor) -> ChannelStats:
        """Statistics of ``vectors`` [N, D], accumulated in float64.

        Hundreds of thousands of patches summed in float32 lose digits the standardized
        features would then carry into every distance.
        """
        if vectors.ndim != 2 or vectors.shape[0] < 2:
            raise ValueError(f"channel statistics need vectors [N>=2, D], got "
                             f"{tuple(vectors.shape)}")
        wide = vectors.detach().to(torch.float64)
        mean = wide.mean(dim=0)
        var = (wide - mean).square().mean(dim=0)
        return cls(mean.float().cpu(), (var + STATS_EPS).sqrt().float().cpu())

    def check(self, dim: int) -> None:
        """Refuse statistics that do not fit a bank of ``dim`` channels or cannot divide."""
        for name, t in (("mean", self.mean), ("std", self.std)):
            if t.shape != (dim,):
                raise ValueError(f"feature statistics {name} has shape {tuple(t.shape)}, the "
                                 f"bank has {dim} channels")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"feature statistics {name} holds non-finite values")
        if bool((self.std <= 0).any()):
            raise ValueError("feature statistics std must be positive")


class FeatureAlignment(nn.Module):
    """Patch features ``[B,D,H,W]`` -> the same, with the training patches' per-channel statistics.

    ``style_align`` (AdaIN): every image's per-channel mean and std over its own grid are
    replaced by the training reference. A lighting change moves whole feature channels of an
    image together, which a per-patch kNN reads as "every patch is new"; re-centring each image
    on the training statistics removes the global part of that move and keeps the local
    differences a defect makes. ``standardize`` (``normalization="batch"``): every channel
    divided by its training std after removing its training mean, so that channels with a wide
    range do not dominate the Euclidean distance. Both are per-channel affine maps with
    statistics fixed at fit: buffers here, so an exported graph computes exactly this.
    Statistics are per channel, so taking them per backbone stage or on the concatenated
    vector is the same. With both on, the result is each image's own per-channel
    standardization, i.e. ``normalization="instance"`` (bench/domain_shift.py scores the two
    identically).
    """

    def __init__(self, stats: ChannelStats, *, standardize: bool, style_align: bool,
                 gain: torch.Tensor | None = None) -> None:
        super().__init__()
        self.standardize = bool(standardize)
        self.style_align = bool(style_align)
        self.register_buffer("ref_mean", stats.mean.detach().float().view(1, -1, 1, 1).clone())
        self.register_buffer("ref_std", stats.std.detach().float().view(1, -1, 1, 1).clone())
        #: per-channel weights [D] put back after standardizing (which divides out the
        #: extractor's ``fine_weight``); None: none, and no buffer in an exported graph
        self.gain: torch.Tensor | None
        if standardize and gain is not None:
            self.register_buffer("gain", gain.detach().float().view(1, -1, 1, 1).clone())
        else:
            self.gain = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.style_align:
            mean = features.mean(dim=(2, 3), keepdim=True)
            var = (features - mean).square().mean(dim=(2, 3), keepdim=True)
            features = (features - mean) / (var + STATS_EPS).sqrt() * self.ref_std + self.ref_mean
        if self.standardize:
            features = (features - self.ref_mean) / self.ref_std
            if self.gain is not None:
                features = features * self.gain
        return features

    def vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """The same for ONE image's patch vectors [M, D] (e.g. the kept cells of a turned view):
        the image statistics are then those of these M cells."""
        grid = vectors.T.unsqueeze(0).unsqueeze(-1)  # [1, D, M, 1]
        return self(grid)[0, :, :, 0].T.contiguous()


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
