"""Kensa's default detector: a PatchCore-style memory bank tuned for a handful of good shots.

Differences from stock PatchCore, each kept because it measurably helps with few shots
(see bench/fewshot.py and the engine issue's closing note):
- aspect-preserving resize of the whole image (no squashing, no centre crop), so defects near
  the border are seen and elongated parts keep their texture scale;
- flipped/rotated copies of the shots in the bank while shots are few;
- the full bank while it is small, a greedy coreset only above ``max_bank`` vectors, which also
  bounds scoring time: exact kNN costs queries x bank x dim;
- anomaly maps smoothed at the working resolution and brought back to the original size.

Options against lighting drift (issue 14, bench/domain_shift.py): intensity matching of the input
(on by default), per-image feature normalization, and two that use the training patches'
per-channel statistics (``normalization="batch"``, ``style_align``), kept in their own state file.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast, get_args

import cv2
import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from engine.artifacts import atomic_write, write_json_atomic
from engine.backbones import DEFAULT_BACKBONE
from engine.coreset import CANDIDATE_FACTOR, CHUNK_ROWS, GreedyCoresetSampler
from engine.device import pick_device
from engine.features import (
    NORMALIZATIONS,
    ChannelStats,
    FeatureAlignment,
    ImageNormalization,
    Normalization,
    PatchFeatureExtractor,
)
from engine.heap import HeapTrimmer
from engine.memory_bank import BankIntegrityError, IncrementalMemoryBank, KnnResult, MemoryBank
from engine.models.augment_views import (
    ViewMode,
    angles_for,
    apply_view,
    grid_coordinates,
    turned,
    views_for,
)
from engine.models.base import (
    MODEL_FILE,
    Capability,
    FitReport,
    ImageSource,
    ModelStateError,
    PatchEvidence,
    ProgressFn,
    ProvenanceRecord,
    ScoreResult,
    read_model_json,
    read_verified,
    require,
)
from engine.models.colour import ColourMode, reads_gray, to_gray
from engine.models.preprocess import (
    CELL_CENTRE,
    GRID_STRIDE,
    grid_to_work,
    resize_map,
    resized_shape,
    shrink,
    to_tensor,
)

#: "scale": how images are brought to the working size (see FewShotConfig.scale)
ScaleMode = Literal["shared", "per_image"]
#: with a shared scale, no image is worked on at more than this multiple of ``image_size``
#: (an odd image much larger than the shots would otherwise cost memory and time)
MAX_SIDE_FACTOR = 2

#: the coarse view's long side, in multiples of ``image_size`` (``FewShotConfig.coarse_map``):
#: 0.75 measured best for pixel AUROC within the speed budget (1.0 and 0.875 keep more AUPRO;
#: 1.0 costs +39 % scoring time on mixed-size tiles, over the budget, 0.75 +20 %; README)
COARSE_FACTOR = 0.75

#: ``FewShotConfig.fine_weight``'s default (stop 24, bench/quality_search.py key
#: ``"fine_weight"``); a model.json without the key was built with 1
FINE_WEIGHT_DEFAULT = 0.25

BANK_FILE = "bank.safetensors"
#: the training patches' per-channel mean/std (``normalization="batch"``, ``style_align``)
STATS_FILE = "feature_stats.safetensors"
#: model.json layout: 2 = provenance records per (image, view); 1 (no key) = "images" by index.
STATE_FORMAT_VERSION = 2
#: model.json's "feature_alignment": the stride-16 stage sits on the stride-8 cells it covers
#: (engine.features.upsample_onto_fine); absent = a bank built with the older upsampling.
FEATURE_ALIGNMENT = "coarse-on-fine"


@dataclass(frozen=True)
class FewShotConfig:
    """Every knob of the pipeline; the defaults are the ones the benchmarks justify."""

    backbone: str = DEFAULT_BACKBONE
    image_size: int = 512
    views: ViewMode = "auto"
    max_bank: int = 4_000
    n_neighbors: int = 1
    #: "instance" / "layer": each image's stages normalized on their own; "batch": every channel
    #: standardized with the training patches' mean/std (engine.features.FeatureAlignment)
    normalization: Normalization = "none"
    #: AdaIN: each image's per-channel feature mean/std set to the training patches' (the
    #: bank's views and every scored image alike) before the bank lookup
    style_align: bool = False
    blur_sigma: float = 6.0
    match_intensity: bool = True
    #: "auto": brightness only when the good shots disagree on colour (engine.models.colour)
    colour: ColourMode = "auto"
    #: "shared": one resize factor for every image (the shots' median long side -> image_size),
    #: so a patch covers the same area of the part in every image; "per_image": every image's
    #: long side -> image_size. The same when all images have one size, as on a line camera.
    scale: ScaleMode = "shared"
    #: an image worked above ``image_size`` (larger than the shots, under the shared scale)
    #: also gets a map at ``COARSE_FACTOR`` x ``image_size``, averaged into its own map (see
    #: ``_coarse_view``); its score stays its own. Nothing changes where every image has one
    #: size.
    coarse_map: bool = True
    #: the stride-8 stage's share of every squared patch distance, against the stride-16
    #: stage's 1 (0: stride-16 context alone, on the same stride-8 grid). With few shots the
    #: fine stage's texture detail differs between good parts nearly as much as a defect
    #: changes it; README "How the detector works"
    fine_weight: float = FINE_WEIGHT_DEFAULT
    seed: int = 0

    def __post_init__(self) -> None:
        if not 64 <= self.image_size <= 2048:
            raise ValueError(f"image_size must be in [64, 2048], got {self.image_size}")
        if self.max_bank < 100:
            raise ValueError(f"max_bank must be at least 100, got {self.max_bank}")
        if not 1 <= self.n_neighbors <= 16:
            raise ValueError(f"n_neighbors must be in [1, 16], got {self.n_neighbors}")
        if self.views not in get_args(ViewMode):
            raise ValueError(f"views must be one of {', '.join(get_args(ViewMode))}, got "
                             f"{self.views!r}")
        if self.scale not in ("shared", "per_image"):
            raise ValueError(f"scale must be shared or per_image, got {self.scale!r}")
        if self.colour not in ("auto", "rgb", "gray"):
            raise ValueError(f"colour must be auto, rgb or gray, got {self.colour!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be none, instance, layer or batch, got "
                             f"{self.normalization!r}")
        weight = self.fine_weight
        if isinstance(weight, bool) or not isinstance(weight, int | float) \
                or not 0 <= weight <= 1:
            raise ValueError(f"fine_weight must be a number in [0, 1], got {weight!r}")
        for name in ("style_align", "coarse_map"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.style_align and self.normalization == "instance":
            raise ValueError("style_align does nothing with normalization 'instance' (every "
                             "image's channels are standardized already): choose one")

    @property
    def uses_feature_stats(self) -> bool:
        """Whether the model keeps the training patches' per-channel statistics."""
        return self.normalization == "batch" or self.style_align

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> FewShotConfig:
        """Config from user/JSON parameters; an unknown name is a one-line ValueError."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(f"unknown training parameter(s) {', '.join(unknown)} for "
                             f"kensa_patchcore; known: {', '.join(known)}")
        return cls(**params)


#: a view of a shot: (quarter turns, mirrored) or a turn in degrees (``views="any_angle"``)
View = tuple[int, bool] | int


def view_name(view: View) -> str:
    """``rot0``, ``rot90``, ..., ``rot270+flip``, ``rot30``: how a provenance record names it."""
    if isinstance(view, int):
        return f"rot{view}"
    turns, flip = view
    return f"rot{90 * turns}" + ("+flip" if flip else "")


def view_provenance(height: int, width: int, view: tuple[int, bool]) -> torch.Tensor:
    """[h*w, 2] original-grid (row, col) of what each cell of a viewed grid LOOKS at.

    ``grid_coordinates`` mirrors indices (viewed cell c <- original cell n - 1 - c), which is
    right for the content of a cell but not for where its vector looks: a cell's receptive
    field is centred ``CELL_CENTRE`` cells off its index (engine.models.preprocess), so along
    a mirrored axis it lands on original cell n - c - 2 * CELL_CENTRE (clipped to the grid).
    """
    coords = grid_coordinates(height, width, view)
    shift = round(1 - 2 * CELL_CENTRE)
    for axis, n in ((0, height), (1, width)):
        if shift and n > 1 and int(coords[0, axis]) == n - 1:  # viewed (0, 0) from the far end
            coords[:, axis] = (coords[:, axis] + shift).clamp(max=n - 1)
    return coords


@dataclass
class FewShotState:
    config: FewShotConfig
    records: list[ProvenanceRecord] = field(default_factory=list)
    n_shots: int = 0
    n_patches: int = 0
    intensity: tuple[float, float] = (0.45, 0.22)
    #: the bank compares brightness only (decided at fit from ``config.colour`` and the shots)
    gray: bool = False
    #: working pixels per original pixel for every image (``config.scale`` "shared"); None:
    #: each image's long side is scaled to ``config.image_size``
    scale_factor: float | None = None
    #: per-channel mean/std of every training patch of the first fit (None unless
    #: ``config.uses_feature_stats``)
    feature_stats: ChannelStats | None = None


class BankUpdate(NamedTuple):
    """An incremental update: the grown model (a new object) and the records it issued.

    ``records`` holds one record per (new image, view), also those that added no vector, so
    their ids are spent; ``added`` / ``skipped`` count vectors as in ``UpdateResult``.
    """

    model: FewShotPatchCore
    records: list[ProvenanceRecord]
    added: int
    skipped: int
    recoreset: bool
    threshold: float


class FewShotPatchCore:
    """``fit(good images)`` builds the bank; ``score(images)`` gives scores and anomaly maps."""

    name = "kensa_patchcore"
    capabilities = frozenset({Capability.MEMORY_BANK, Capability.INCREMENTAL_UPDATE,
                              Capability.EXPORT,
                              Capability.NEAREST_PATCHES})

    def __init__(self, config: FewShotConfig | None = None, device: str | None = None) -> None:
        self.config = config or FewShotConfig()
        self.device = pick_device(device)
        # "batch" needs the shots' statistics: applied after the extractor (feature_alignment)
        per_image = cast(ImageNormalization, "none" if self.config.normalization == "batch"
                         else self.config.normalization)
        self.extractor = PatchFeatureExtractor(
            self.config.backbone, normalization=per_image, fine_weight=self.config.fine_weight
        ).to(self.device)
        self.bank: MemoryBank | None = None
        self.state = FewShotState(self.config)
        self.heap = HeapTrimmer()

    @staticmethod
    def validate_params(params: Mapping[str, Any]) -> None:
        """Refuse bad parameters (unknown names, unsafe ranges) before any work starts."""
        FewShotConfig.from_params(params)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], device: str | None = None
                    ) -> FewShotPatchCore:
        """The registry's constructor: plain parameters, checked by the config."""
        return cls(FewShotConfig.from_params(params), device=device)

    @property
    def records(self) -> list[ProvenanceRecord]:
        """Every provenance record of this state (fit and updates), ids ascending."""
        return self.state.records

    @property
    def vector_count(self) -> int:
        return 0 if self.bank is None else len(self.bank)

    @property
    def dim(self) -> int:
        return 0 if self.bank is None else self.bank.dim

    # -- features -------------------------------------------------------------------------
    def working_tensor(self, image: np.ndarray) -> torch.Tensor:
        """An RGB uint8 image at the size the bank works at: [1,3,h,w] in [0,1]."""
        return to_tensor(image, self.working_side(image))

    def working_side(self, image: np.ndarray) -> int:
        """The long side ``image`` is worked at (see ``FewShotConfig.scale``)."""
        factor = self.state.scale_factor
        if factor is None:
            return self.config.image_size
        side = round(max(image.shape[:2]) * factor)
        return int(min(MAX_SIDE_FACTOR * self.config.image_size, max(64, side)))

    def _features(self, tensor: torch.Tensor) -> torch.Tensor:
        """[1,3,h,w] -> [1,D,h/8,w/8], aligned as the bank's vectors are."""
        feats = self.extractor(self._prepare(tensor))
        alignment = self.feature_alignment()
        if alignment is None:
            return feats
        with torch.inference_mode():
            return alignment(feats)

    def feature_alignment(self) -> FeatureAlignment | None:
        """The per-channel alignment of this state's features, or None when it has none.

        Built from ``state.feature_stats`` on each call (two [D] vectors: cheap), so an
        updated model, which shares the extractor, can never see another state's statistics.
        """
        stats = self.state.feature_stats
        if stats is None or not self.config.uses_feature_stats:
            return None
        return FeatureAlignment(stats, standardize=self.config.normalization == "batch",
                                style_align=self.config.style_align,
                                gain=self.extractor.channel_gain()).to(self.device)

    def _prepare(self, tensor: torch.Tensor) -> torch.Tensor:
        """The backbone's input: grey if the bank reads brightness only, intensity-matched."""
        tensor = tensor.to(self.device)
        if self.state.gray:
            tensor = to_gray(tensor)
        if self.config.match_intensity:
            tensor = self._match_intensity(tensor)
        return tensor

    def _match_intensity(self, tensor: torch.Tensor) -> torch.Tensor:
        """Give every image the training shots' mean brightness and contrast.

        Lighting and exposure drift between parts; with few shots the bank has seen one
        exposure, so a darker good part would light up everywhere.
        """
        mean = tensor.mean(dim=(2, 3), keepdim=True)
        std = tensor.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
        target_mean, target_std = self.state.intensity
        return ((tensor - mean) / std * target_std + target_mean).clamp(0, 1)

    # -- fit ------------------------------------------------------------------------------
    def fit(
        self,
        images: Sequence[np.ndarray],
        progress: ProgressFn | None = None,
        sources: Sequence[ImageSource] | None = None,
        first_id: int = 0,
        colour_evidence: Sequence[np.ndarray] = (),
    ) -> FitReport:
        """Build the bank from good shots; records get ids ``first_id, first_id + 1, ...``.

        ``colour_evidence``: other good images of the product that stay out of the bank (a
        training's held-out goods). They only help ``colour="auto"`` decide: one shot cannot
        say whether good parts come in several colours, the shot and two held-out goods can
        (``bench/fewshot.py --held-out-goods 2``: toothbrush at one shot 0.826 -> 0.887).
        """
        if len(images) == 0:
            raise ValueError("fit needs at least one good image")
        started = time.perf_counter()
        sources = _sources(images, sources)
        n_shots = sum(not s.augmented for s in sources) or len(images)  # copies are no parts
        views = self._views(n_shots)
        plan = _FitPlan(len(images), len(views), self.config.max_bank)
        shots = [im for im, s in zip(images, sources, strict=True) if not s.augmented] or images
        gray = reads_gray(self.config.colour, [*shots, *colour_evidence])
        self.state = FewShotState(self.config, scale_factor=shared_scale(self.config, shots))
        tensors = []
        for i, image in enumerate(images):  # a resize per image: hundreds take seconds
            tensors.append(self.working_tensor(image))
            if progress:
                progress("preparing images", plan.prepare * (i + 1) / len(images))
        shown = [to_gray(t) if gray else t for t in tensors]
        self.state = FewShotState(self.config, n_shots=n_shots, gray=gray,
                                  scale_factor=self.state.scale_factor, intensity=(
            float(np.mean([t.mean() for t in shown])), float(np.mean([t.std() for t in shown]))))
        # the coreset's share follows from the real patch count, known once images are sized
        patches = sum((t.shape[-2] // GRID_STRIDE) * (t.shape[-1] // GRID_STRIDE)
                      for t in tensors) * len(views)
        extracted = max(plan.prepare, replace(plan, patches=patches).extracted)
        blocks, all_provenance = self._embed_views(tensors, views, first_id, progress=progress,
                                                   span=(plan.prepare, extracted))
        if self.config.uses_feature_stats:  # every training patch, before the coreset
            self.state.feature_stats = ChannelStats.of(torch.cat(blocks))
        tick = None if progress is None else (lambda: progress("extracting features", extracted))
        all_vectors = self._aligned(blocks, tick=tick)
        del blocks
        bank = MemoryBank(all_vectors, all_provenance)
        if len(bank) > self.config.max_bank:
            if progress:
                progress("selecting coreset", extracted)
            sampler = GreedyCoresetSampler(size=self.config.max_bank, seed=self.config.seed)
            lo = extracted
            step = (None if progress is None  # inside the loop: a Cancel stops it (jobs)
                    else lambda f: progress("selecting coreset", lo + (1.0 - lo) * f))
            bank = bank.subsample(sampler.run(bank.vectors, progress=step))
        if progress:  # not "done": fit is one step of a training, whose caller says that
            progress("bank ready", 1.0)
        self.bank = bank
        self.state.records = _records(images, tensors, sources, views, first_id)
        self.state.n_patches = int(all_vectors.shape[0])
        return FitReport(len(images), int(all_vectors.shape[0]), len(bank),
                         time.perf_counter() - started)

    def _views(self, n_shots: int) -> list[View]:
        return [*views_for(self.config.views, n_shots), *angles_for(self.config.views)]

    def embed(
        self,
        tensors: Sequence[torch.Tensor],
        views: Sequence[View],
        first_id: int = 0,
        progress: ProgressFn | None = None,
        span: tuple[float, float] = (0.0, 0.8),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch vectors of every view of every image, provenance in original coordinates.

        Shared by ``fit`` and ``update``, so new good images enter the bank exactly as the
        first shots did (aligned with this state's feature statistics, if it uses them). View v
        of image i gets record id ``first_id + i * len(views) + v``, the numbering
        :func:`_records` uses. Progress runs over ``span`` of the caller's 0..1.
        """
        blocks, provenance = self._embed_views(tensors, views, first_id, progress, span)
        return self._aligned(blocks), provenance

    def _aligned(self, blocks: list[torch.Tensor],
                 tick: Callable[[], None] | None = None) -> torch.Tensor:
        """One [M, D] block per (image, view), aligned view by view, as one [N, D] tensor.

        Style alignment takes each view's statistics over that view's cells, as scoring takes
        an image's over its grid, so a training image scored again meets its own vectors.
        Consumes ``blocks``: each is copied into one tensor and then replaced by an empty one
        (its storage freed, so a 200-image fit holds its 500 MB of vectors once, not twice);
        ``tick`` is called between blocks, since filling that much fresh memory took seconds.
        """
        alignment = self.feature_alignment()
        out = torch.empty(sum(b.shape[0] for b in blocks), blocks[0].shape[1],
                          dtype=blocks[0].dtype, device=blocks[0].device)
        row = 0
        for i, block in enumerate(blocks):
            if alignment is not None:
                with torch.inference_mode():
                    block = alignment.vectors(block)
            out[row : row + block.shape[0]].copy_(block)
            row += block.shape[0]
            blocks[i] = block = block.new_empty((0, block.shape[1]))  # a view would keep it
            if tick is not None:
                tick()
        return out

    def _embed_views(
        self,
        tensors: Sequence[torch.Tensor],
        views: Sequence[View],
        first_id: int,
        progress: ProgressFn | None,
        span: tuple[float, float],
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``embed`` before alignment: one raw [M, D] block per (image, view)."""
        vectors: list[torch.Tensor] = []
        provenance: list[torch.Tensor] = []
        for offset, tensor in enumerate(tensors):
            gh, gw = tensor.shape[-2] // GRID_STRIDE, tensor.shape[-1] // GRID_STRIDE
            for v, view in enumerate(views):
                if isinstance(view, int):  # a turn between quarter turns: fill cells left out
                    # prepared first: the larger canvas must not change the intensity matching
                    viewed, coords, keep = turned(self._prepare(tensor), view, GRID_STRIDE,
                                                  CELL_CENTRE)
                    feats = self.extractor(viewed.to(self.device))[0]  # [D,h',w']
                else:
                    viewed, coords, keep = apply_view(tensor, view), None, None
                    feats = self.extractor(self._prepare(viewed))[0]
                flat = feats.flatten(1).T
                if coords is None:
                    coords = view_provenance(gh, gw, view)
                    if coords.shape[0] != flat.shape[0]:
                        raise RuntimeError(
                            f"feature grid {tuple(feats.shape[1:])} does not match {gh}x{gw}"
                        )
                else:
                    flat, coords = flat[keep.to(flat.device)], coords[keep]
                vectors.append(flat.contiguous())
                record_id = first_id + offset * len(views) + v
                ids = torch.full((coords.shape[0], 1), record_id, dtype=torch.int64)
                provenance.append(torch.cat([ids, coords], dim=1))
            if progress:
                lo, hi = span
                progress("extracting features", lo + (hi - lo) * (offset + 1) / len(tensors))
        return vectors, torch.cat(provenance)

    # -- incremental update -----------------------------------------------------------------
    def update(
        self,
        images: Sequence[np.ndarray],
        sources: Sequence[ImageSource] | None = None,
        first_id: int | None = None,
    ) -> BankUpdate:
        """New good images into a NEW model whose bank keeps the most novel of their patches.

        ``first_id`` must be above every id ever issued for this model's bank (the database
        allocates it; default: one past this state's records). This model is left unchanged,
        so a cached copy keeps scoring with the old bank.

        The feature statistics (``normalization="batch"``, ``style_align``) stay those of the
        first fit: every vector already in the bank was standardized/aligned with them, so new
        statistics would put the new vectors and every scored image in other coordinates than
        the old vectors, and distances between the two would mean nothing.
        """
        if self.bank is None:
            raise RuntimeError("the model has no memory bank yet: call fit() or load() first")
        if len(images) == 0:
            raise ValueError("update needs at least one good image")
        sources = _sources(images, sources)
        if first_id is None:
            first_id = max((r.id for r in self.records), default=-1) + 1
        used = {r.id for r in self.records}
        views = self._views(max(1, self.state.n_shots))
        tensors = [self.working_tensor(image) for image in images]
        records = _records(images, tensors, sources, views, first_id)
        clash = used.intersection(r.id for r in records)
        if clash:
            raise ValueError(f"provenance ids {sorted(clash)[:5]} are already used by this bank; "
                             "first_id must be above every id ever issued")
        vectors, provenance = self.embed(tensors, views, first_id)
        grower = IncrementalMemoryBank(self.bank, max_size=self.config.max_bank,
                                       seed=self.config.seed)
        result = grower.update(vectors, provenance)
        grown = copy.copy(self)  # shares the extractor; bank and state are replaced, not mutated
        grown.bank = result.bank
        grown.state = FewShotState(self.config, [*self.records, *records], self.state.n_shots,
                                   self.state.n_patches, self.state.intensity, self.state.gray,
                                   self.state.scale_factor, self.state.feature_stats)
        return BankUpdate(grown, records, result.added, result.skipped, result.recoreset,
                          result.threshold)

    # -- score ----------------------------------------------------------------------------
    def patch_distances(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """kNN of every patch of one image: distances [h*w,k], indices [h*w,k], grid shape."""
        tensor = self.working_tensor(image)
        result, grid = self._search(tensor, self.config.n_neighbors)
        return result.distances, result.indices, (grid, tuple(tensor.shape[-2:]))

    def _search(self, tensor: torch.Tensor, k: int) -> tuple[KnnResult, tuple[int, int]]:
        """The ``k`` nearest bank vectors of every patch of a [1,3,h,w] tensor, and its grid."""
        if self.bank is None:
            raise RuntimeError("the model has no memory bank yet: call fit() or load() first")
        feats = self._features(tensor)[0]
        return self.bank.knn(feats.flatten(1).T, k=k), (int(feats.shape[1]), int(feats.shape[2]))

    def score_one(self, image: np.ndarray) -> tuple[float, np.ndarray]:
        tensor = self.working_tensor(image)
        result, grid = self._search(tensor, self.config.n_neighbors)
        work = self._work_map(result.distances.mean(dim=1), grid, tensor.shape[-2:])
        score = float(work.max())
        work = self._coarse_view(tensor, work, score)
        return score, resize_map(work, image.shape[0], image.shape[1])

    def _work_map(self, patch: torch.Tensor, grid: Sequence[int], work: Sequence[int]
                  ) -> np.ndarray:
        """Patch distances [gh*gw] -> the smoothed map at the working size."""
        cells = patch.reshape(int(grid[0]), int(grid[1])).float().cpu().numpy()
        out = grid_to_work(cells, int(work[0]), int(work[1]))  # cells where they look
        if self.config.blur_sigma > 0:
            out = cv2.GaussianBlur(out, (0, 0), self.config.blur_sigma)
        return out

    def coarse_shape(self, height: int, width: int) -> tuple[int, int] | None:
        """The size of the coarse view of an image worked at ``height`` x ``width``, or None
        when it gets none (worked at most at ``image_size``, or ``coarse_map`` off)."""
        size = self.config.image_size
        if not self.config.coarse_map or max(height, width) <= size:
            return None
        return resized_shape(height, width, round(COARSE_FACTOR * size))

    def _coarse_view(self, tensor: torch.Tensor, work: np.ndarray, score: float
                     ) -> np.ndarray:
        """``work`` averaged with the map of the same image shrunk to ``COARSE_FACTOR`` x
        ``image_size``.

        Under the shared scale an image larger than the shots is worked above ``image_size``
        (up to ``MAX_SIDE_FACTOR`` times), so each patch sees a smaller share of it, and a
        large, gradual defect (a change of surface finish across a tile) lights up at its
        edges more than over its area. The coarse view sees more of it per patch. The score
        stays the working view's (it compares like with like with the bank: scoring from the
        shrunk view lost image AUROC, README "How the detector works"), and the coarse map is
        capped at that score, so no pixel of the map exceeds it. The shrink runs on the working
        tensor, not the original image, so an exported graph (one input) can repeat it.
        """
        shape = self.coarse_shape(*work.shape)
        if shape is None:
            return work
        result, grid = self._search(shrink(tensor, *shape), self.config.n_neighbors)
        second = self._work_map(result.distances.mean(dim=1), grid, shape)
        second = resize_map(second, *work.shape)
        return (work + np.minimum(second, np.float32(score))) / 2

    def score(self, images: Sequence[np.ndarray]) -> ScoreResult:
        scores, maps = [], []
        for image in images:
            s, m = self.score_one(image)
            scores.append(s)
            maps.append(m)
            self.heap.after_image()
        return ScoreResult(np.asarray(scores, dtype=np.float64), maps)

    # -- explanation (engine.explain) ------------------------------------------------------
    def explain_patches(self, image: np.ndarray, k: int = 3) -> PatchEvidence:
        """Score one image and keep the ``k`` nearest bank vectors of every patch, in ONE pass.

        An explanation needs the score, the map and the neighbours; scoring first and searching
        again would pay the backbone and the kNN twice. The first ``n_neighbors`` columns of an
        ascending kNN are exactly what :meth:`score_one` averages, so score and map are the same
        numbers scoring gives (the explain tests check it).
        """
        if self.bank is None:
            raise RuntimeError("the model has no memory bank yet: call fit() or load() first")
        k = max(1, min(int(k), len(self.bank)))
        n = self.config.n_neighbors
        tensor = self.working_tensor(image)
        result, (gh, gw) = self._search(tensor, max(k, n))
        work_h, work_w = (int(v) for v in tensor.shape[-2:])
        work = self._work_map(result.distances[:, :n].mean(dim=1), (gh, gw), (work_h, work_w))
        score = float(work.max())
        work = self._coarse_view(tensor, work, score)  # as score_one
        rows = result.indices[:, :k].cpu()
        return PatchEvidence(
            score, resize_map(work, image.shape[0], image.shape[1]),
            result.distances[:, :k].float().cpu().numpy().reshape(gh, gw, k),
            rows.numpy().reshape(gh, gw, k),
            self.bank.provenance[rows.reshape(-1)].numpy().reshape(gh, gw, k, 3),
            (work_h, work_w),
        )

    def stage_activations(self, image: np.ndarray) -> list[tuple[str, int, int, np.ndarray]]:
        """Per backbone stage the model reads: (layer, stride, channels, mean |activation|).

        What the backbone "looks at" before the bank comparison (the explain page's feature
        view); the maps are on each stage's own grid, taken from the same normalized,
        intensity-matched input that scoring uses.
        """
        tensor = self._prepare(self.working_tensor(image))
        extractor = self.extractor
        info = extractor.network.feature_info
        with torch.inference_mode():
            stages = extractor.network((tensor - extractor.mean) / extractor.std)
        return [
            (str(name), int(stride), int(channels),
             stage[0].abs().mean(dim=0).float().cpu().numpy())
            for name, stride, channels, stage in zip(
                info.module_name(), info.reduction(), info.channels(), stages, strict=True)
        ]

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: Path) -> dict[str, str]:
        """Bank as safetensors and the description as JSON, each written atomically."""
        if self.bank is None:
            raise RuntimeError("nothing to save: the model has not been fitted")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        bank_sha = self.bank.save(directory / BANK_FILE,
                                  metadata={"backbone": self.config.backbone})
        files = {BANK_FILE: bank_sha}
        stats = self.state.feature_stats
        if stats is not None:
            tensors = {"mean": stats.mean.detach().cpu().contiguous(),
                       "std": stats.std.detach().cpu().contiguous()}
            files[STATS_FILE] = atomic_write(directory / STATS_FILE, lambda tmp: save_file(
                tensors, tmp, metadata={"format": "kensa.feature_stats/1"}))
        payload = {
            "model": self.name,
            "format_version": STATE_FORMAT_VERSION,
            "config": asdict(self.config),
            "records": [r.as_dict() for r in self.records],
            "n_shots": self.state.n_shots,
            "n_patches": self.state.n_patches,
            "intensity": list(self.state.intensity),
            "gray": self.state.gray,
            "scale_factor": self.state.scale_factor,
            "feature_alignment": FEATURE_ALIGNMENT if self.extractor.align_coarse else None,
            "bank_file": BANK_FILE,
            "bank_sha256": bank_sha,
            **({"stats_file": STATS_FILE, "stats_sha256": files[STATS_FILE]}
               if stats is not None else {}),
        }
        return {**files, MODEL_FILE: write_json_atomic(directory / MODEL_FILE, payload)}

    @classmethod
    def load(cls, directory: Path, files: Mapping[str, str] | None = None,
             device: str | None = None) -> FewShotPatchCore:
        """Rebuild a fitted model from ``directory``; every file named in ``files`` is verified.

        The bank is the file ``model.json`` names; when ``files`` lists another single
        ``.safetensors`` file instead, that one (bank versions saved before state folders kept
        one ``model.json`` beside several bank files).
        """
        directory = Path(directory)
        payload = read_model_json(directory, files, cls.name)
        try:
            params = require(payload, "config", directory)
            # a model saved before the coarse view (or the stage weight) keeps the maps it was
            # checked with
            params = ({"coarse_map": False, "fine_weight": 1.0, **params}
                      if isinstance(params, dict) else params)
            config = FewShotConfig.from_params(params)
            model = cls(config, device=device)
            # a bank built before the stages were aligned keeps its features' geometry
            model.extractor.align_coarse = payload.get("feature_alignment") == FEATURE_ALIGNMENT
            records, n_shots = _stored_records(payload, directory)
            model.state = FewShotState(model.config, records, n_shots,
                                       int(require(payload, "n_patches", directory)),
                                       tuple(payload.get("intensity", (0.45, 0.22))),
                                       bool(payload.get("gray", False)),
                                       _scale_factor(payload.get("scale_factor")))
        except ModelStateError:
            raise
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelStateError(f"model description {directory / MODEL_FILE}: "
                                  f"{exc}") from None  # no class names: pages show this
        bank_name = str(require(payload, "bank_file", directory))
        expected = payload.get("bank_sha256")
        if files is not None:
            banks = [n for n in files if n.endswith(".safetensors") and n != STATS_FILE]
            if bank_name not in files and len(banks) == 1:
                bank_name = banks[0]
            if bank_name not in files:
                raise ModelStateError(f"the state's file list {sorted(files)} names no bank "
                                      f"(model.json names {bank_name!r})")
            expected = files[bank_name]
        data = read_verified(directory, bank_name, {bank_name: expected} if expected else None)
        try:
            model.bank = MemoryBank.from_bytes(data, directory / bank_name).to(model.device)
        except BankIntegrityError as exc:
            raise ModelStateError(str(exc)) from None
        model.state.feature_stats = _stored_stats(payload, directory, files, model.config,
                                                  model.bank.dim)
        return model


def _stored_stats(payload: Mapping[str, Any], directory: Path, files: Mapping[str, str] | None,
                  config: FewShotConfig, dim: int) -> ChannelStats | None:
    """The feature statistics a state names, verified; None for a state that uses none.

    The sha256 comes from the manifest, else from ``model.json`` (itself verified when a
    manifest is given), so an altered statistics file is refused either way.
    """
    name = payload.get("stats_file")
    if name is None:
        if config.uses_feature_stats:
            raise ModelStateError(f"model description {Path(directory) / MODEL_FILE} uses "
                                  f"feature statistics but names no stats_file")
        return None
    name = str(name)
    expected = (files or {}).get(name, payload.get("stats_sha256"))
    data = read_verified(directory, name, {name: str(expected)} if expected else None)
    try:
        tensors = safetensors.torch.load(data)
        stats = ChannelStats(tensors["mean"].float(), tensors["std"].float())
        stats.check(dim)
    except (SafetensorError, ValueError, RuntimeError, KeyError) as exc:
        message = f"lacks {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise ModelStateError(f"feature statistics {Path(directory) / name}: {message}"
                              ) from None
    return stats


def shared_scale(config: FewShotConfig, shots: Sequence[np.ndarray]) -> float | None:
    """Working pixels per original pixel shared by every image, or None (``per_image``).

    The shots' median long side goes to ``image_size``: crops of different sizes (parts cut out
    of a larger picture, tiles of several formats) then keep one physical scale, instead of a
    small crop being magnified and a large one shrunk until their textures no longer match.
    """
    if config.scale == "per_image" or not shots:
        return None
    return config.image_size / float(np.median([max(im.shape[:2]) for im in shots]))


def _scale_factor(value: Any) -> float | None:
    """model.json's ``scale_factor``: absent/None for banks built before shared scaling."""
    if value is None:
        return None
    factor = float(value)
    if not 0 < factor < 100:
        raise ValueError(f"scale_factor must be a positive factor, got {value!r}")
    return factor


@dataclass(frozen=True)
class _FitPlan:
    """Where each step of ``fit`` ends on its 0..1 progress scale, in proportion to its time.

    The constants are seconds per unit measured on the 2-core dev box at 384 px with
    ``bench/train_scale.py`` (resize of a 1024-px image; backbone pass of one view; greedy step per
    candidate row); only their ratios matter: a job's time estimate is the elapsed
    time scaled by the fraction left, which is right when fractions move evenly in time.
    """

    n_images: int
    n_views: int
    max_bank: int
    #: patch vectors before the coreset; None: ``PATCHES_PER_VIEW`` per view of each image
    patches: int | None = None

    PREPARE_S = 0.009
    #: a backbone pass costs in proportion to its pixels, so to the patches it yields
    #: (0.077 s per view of a square 384-px image, 48 x 48 patches)
    EXTRACT_PATCH_S = 0.077 / 2304
    #: one greedy step over one candidate row (19 s for 460,800 patches to 10k)
    ROW_STEP_S = 4.6e-8
    PATCHES_PER_VIEW = 4096  # before the images are sized: a square image at 512 px, 64 x 64

    @property
    def _costs(self) -> tuple[float, float, float]:
        patches = (self.patches if self.patches is not None
                   else self.n_images * self.n_views * self.PATCHES_PER_VIEW)
        coreset = 0.0
        if patches > self.max_bank:  # the sampler's work: see engine.coreset
            budget = CANDIDATE_FACTOR * self.max_bank
            steps = (min(patches, budget) * self.max_bank
                     + (budget * CHUNK_ROWS if patches > budget else 0.0))
            coreset = self.ROW_STEP_S * steps
        return self.PREPARE_S * self.n_images, self.EXTRACT_PATCH_S * patches, coreset

    @property
    def prepare(self) -> float:
        prepare, extract, coreset = self._costs
        return prepare / (prepare + extract + coreset)

    @property
    def extracted(self) -> float:
        prepare, extract, coreset = self._costs
        return (prepare + extract) / (prepare + extract + coreset)


def _sources(images: Sequence[np.ndarray], sources: Sequence[ImageSource] | None
             ) -> list[ImageSource]:
    if sources is None:
        return [ImageSource(f"image_{i}", "") for i in range(len(images))]
    if len(sources) != len(images):
        raise ValueError(f"{len(sources)} sources given for {len(images)} images")
    return list(sources)


def _records(images: Sequence[np.ndarray], tensors: Sequence[torch.Tensor],
             sources: Sequence[ImageSource], views: Sequence[View], first_id: int
             ) -> list[ProvenanceRecord]:
    """One record per (image, view), numbered exactly as :meth:`FewShotPatchCore.embed` does."""
    out = []
    for i, (image, tensor, source) in enumerate(zip(images, tensors, sources, strict=True)):
        gh, gw = tensor.shape[-2] // GRID_STRIDE, tensor.shape[-1] // GRID_STRIDE
        for v, view in enumerate(views):
            out.append(ProvenanceRecord(first_id + i * len(views) + v, str(source.path),
                                        str(source.sha256), view_name(view),
                                        int(image.shape[0]), int(image.shape[1]), gh, gw))
    return out


def _stored_records(payload: dict[str, Any], directory: Path
                    ) -> tuple[list[ProvenanceRecord], int]:
    """Records and shot count of a model.json, old layout (one id per image) included."""
    if "records" in payload:
        records = [ProvenanceRecord(**r) for r in payload["records"]]
        return records, int(payload.get("n_shots", len({r.path for r in records})))
    images = require(payload, "images", directory)  # format 1: id = index, every view
    return [ProvenanceRecord(i, r["name"], "", "all", r["height"], r["width"],
                             r["grid_height"], r["grid_width"])
            for i, r in enumerate(images)], len(images)
