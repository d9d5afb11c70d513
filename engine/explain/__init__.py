"""Explain one scored image: image level (verdict, score, confidence), regions (box, area,
kind, nearest normal patches), pixels (the raw map). No database and no Streamlit here:
``services.inference.explain`` adds the project's rows (provenance, names, jobs).

One backbone pass serves everything: models with ``Capability.NEAREST_PATCHES`` give their
score, map and k nearest bank vectors per patch together (``explain_patches``); other models
are scored as usual and explained without neighbours.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.explain.confidence import conformal_p_value, false_alarm_rate, knn_spread
from engine.explain.neighbours import LoadFn, Neighbour, cell_box, crop, neighbours_of, peak_cell
from engine.explain.regions import ShapedRegion, shaped_regions
from engine.models.base import AnomalyModel, Capability, PatchEvidence, ProvenanceRecord

ResolveFn = Callable[[Iterable[int]], Mapping[int, ProvenanceRecord]]


@dataclass
class RegionEvidence:
    shaped: ShapedRegion
    cell: tuple[int, int] | None
    query_box: tuple[int, int, int, int]
    query_crop: np.ndarray
    neighbours: list[Neighbour] = field(default_factory=list)


@dataclass
class ImageEvidence:
    """Everything measured about one image; ``evidence`` is None for models without
    nearest patches (then ``knn_spread`` is NaN and regions have no neighbours)."""

    score: float
    score_map: np.ndarray
    verdict: str
    threshold: float
    p_value: float
    false_alarm_rate: float
    knn_spread: float
    n_good: int
    k: int
    regions: list[RegionEvidence]
    evidence: PatchEvidence | None


def has_neighbours(model: AnomalyModel) -> bool:
    return (Capability.NEAREST_PATCHES in model.capabilities
            and callable(getattr(model, "explain_patches", None)))


def explain_arrays(model: AnomalyModel, image: np.ndarray, threshold: float,
                   good_scores: Sequence[float], *, k: int = 3,
                   resolve: ResolveFn | None = None, load: LoadFn | None = None
                   ) -> ImageEvidence:
    """Score ``image`` and gather its evidence against ``threshold``.

    ``good_scores`` are the held-out good scores the threshold was chosen on; ``resolve`` maps
    bank record ids to provenance records and ``load(path, sha256)`` reads a training image
    (both only used with neighbours; without them neighbours carry ids and no crops).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    evidence: PatchEvidence | None = None
    if has_neighbours(model):
        evidence = model.explain_patches(image, k=k)  # type: ignore[attr-defined]
        score, score_map = evidence.score, evidence.score_map
    else:
        result = model.score([image])
        score, score_map = float(result.scores[0]), result.maps[0]
    verdict = "defect" if score >= threshold else "good"
    good = [float(v) for v in good_scores]
    typical = float(np.median(good)) if good else None
    shaped = shaped_regions(score_map, threshold, typical=typical, defect=verdict == "defect")
    size = image.shape[:2]
    regions: list[RegionEvidence] = []
    spread = math.nan
    if evidence is None:
        for s in shaped:
            regions.append(RegionEvidence(s, None, s.box, crop(image, s.box)))
    else:
        grid = evidence.distances.shape[:2]
        top = np.unravel_index(int(np.argmax(evidence.distances[..., 0])), grid)
        spread = knn_spread(evidence.distances[top[0], top[1]])
        cells = [peak_cell(evidence, s.mask, (s.region.x, s.region.y), size) for s in shaped]
        ids = {int(evidence.provenance[r, c, j, 0]) for r, c in cells
               for j in range(evidence.provenance.shape[2])}
        records = dict(resolve(sorted(ids))) if (resolve and ids) else {}
        loader = load or (lambda path, sha: None)
        for s, cell in zip(shaped, cells, strict=True):
            box = cell_box(cell[0], cell[1], grid, size)
            regions.append(RegionEvidence(s, cell, box, crop(image, box),
                                          neighbours_of(evidence, cell, records, loader)))
    return ImageEvidence(score, np.asarray(score_map, np.float32), verdict, float(threshold),
                         conformal_p_value(score, good), false_alarm_rate(threshold, good),
                         spread, len(good), k if evidence is not None else 0, regions, evidence)
