"""Drift of a project's production lots against the model's reference, in plain words.

For every lot (a batch that is not a ``validation-m<id>`` batch), oldest first:

* **scores** against the reference = the validation good scores of the state (bank) version
  the lot was scored with (kept on that state's threshold row as ``normal_scores``): KS, PSI
  and Wasserstein (:mod:`engine.drift.univariate`, Evidently's verdict rule);
* **image quality** (brightness, contrast, sharpness) of the lot's images against the
  validation good images, so a camera or lighting change is told apart from a process change.
  Computed from the image files when the report is built (scoring stores none) and cached per
  sha256 under ``$KENSA_HOME/drift/``; a file that is gone or changed is skipped and counted;
* **embedding drift** for memory-bank models that expose their patch features: MMD between
  the features of (up to ``EMBED_IMAGES``) lot images and of the bank's training images,
  recomputed with the same model, images as the permutation unit (:mod:`engine.drift.embedding`);
* **control charts** over lots on the median score, p95 and reject rate, with limits from the
  reference of the state version IN USE (:mod:`engine.drift.charts`); bank-version and
  threshold changes are listed in ``changes`` for the charts to mark.

Every lot gets a verdict, ``stable`` / ``watch`` / ``drift``, and alerts in words. With
``store=True`` the numbers are written to ``drift_reports``: one row per (lot, statistic),
the reference's state version in ``details``; running the report again replaces the lot's rows
for the same reference, so the table holds one current report per lot and reference.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

import db.repositories as repo
from db.models import (
    Batch,
    DriftReport,
    Prediction,
    Provenance,
    StateVersion,
    Verdict,
)
from engine.artifacts import write_json_atomic
from engine.data import ImageLoadError, load_image_and_sha256
from engine.drift import charts
from engine.drift.embedding import mmd_permutation_test, model_patch_features
from engine.drift.quality import SIGNALS, image_quality
from engine.drift.univariate import (
    PSI_WATCH,
    Reference,
    UnivariateDrift,
    compare,
    finite_or_none,
    reference,
)
from engine.models import registry
from engine.models.base import Capability
from services.context import Kensa
from services.data.projects import require_project
from services.inference.batches import (
    VALIDATION_PREFIX,
    active_model,
    validation_batch_name,
)
from services.wording import model_and_bank, model_numbers

#: Lot images and training images whose patch features enter the MMD test (random, seeded):
#: a forward pass per image is the cost, and 32 images per side already give ~10^17 splits.
EMBED_IMAGES = 32
#: Patch vectors per side in the MMD test (random, seeded): bounds it to seconds.
EMBED_VECTORS = 2000
#: A quality signal whose mean moved less than this (relative) is a "watch", not "drift":
#: a KS test on hundreds of images flags a 1 % exposure change nobody needs to act on.
QUALITY_MIN_CHANGE = 0.05
CHART_METRICS = ("median", "p95", "reject_rate")
METRIC_WORDS = {"median": "median score", "p95": "95th-percentile score",
                "reject_rate": "reject rate"}
ADVICE = {
    "brightness": "check the lighting and the camera exposure",
    "contrast": "check the lighting and the camera settings",
    "sharpness": "check the focus, the lens and for motion blur",
}
VERDICT_LEVEL = {"stable": 0, "watch": 1, "drift": 2}


# --------------------------------------------------------------------------- the contract


@dataclass
class LotDrift:
    """One lot against its reference: raw-score summary, statistics, verdict and alerts."""

    name: str
    batch_id: int
    started_at: datetime
    n_images: int
    median: float
    p95: float
    reject_rate: float
    model_label: str
    state_version_id: int
    threshold: float
    scores: list[float]
    statistics: dict[str, dict[str, float | None]]
    quality_change: dict[str, float]
    verdict: str
    alerts: list[str]
    notes: list[str] = field(default_factory=list)  # what was not computed, and why


@dataclass
class ChartSeries:
    """One control chart over the lots; limits from the reference of the state in use."""

    metric: str
    values: list[float]
    center: float
    sigma: float
    ucl: float
    lcl: float
    ewma: list[float]
    ewma_ucl: list[float]
    ewma_lcl: list[float]
    cusum_pos: list[float]  # >= 0, compared with cusum_h
    cusum_neg: list[float]  # >= 0 (the downward sum), compared with cusum_h
    cusum_h: float
    rule_hits: list[list[str]]


@dataclass
class DriftOverview:
    """Everything the Drift page and ``cli drift`` show for a project."""

    project: str
    reference_label: str
    reference_n: int
    reference_scores: list[float]
    lots: list[LotDrift]
    charts: dict[str, ChartSeries]
    changes: list[dict[str, Any]]
    headline: str

    def as_json(self) -> dict[str, Any]:
        """The CLI's JSON: lots in time order with their statistics and alerts (score lists
        left out: a lot of thousands of images would bury the rest)."""
        lots = []
        for lot in self.lots:
            row = {k: v for k, v in asdict(lot).items() if k != "scores"}
            row["started_at"] = lot.started_at.isoformat()
            row["threshold"] = finite_or_none(lot.threshold)
            lots.append(row)
        return {
            "project": self.project, "headline": self.headline,
            "reference": {"label": self.reference_label, "n": self.reference_n},
            "lots": lots,
            "charts": {k: asdict(v) for k, v in self.charts.items()},
            "changes": self.changes,
        }


# --------------------------------------------------------------------------- reading


@dataclass
class _Reference:
    """A state version's reference: validation good scores and images, training images."""

    state_version_id: int
    model_version_id: int
    label: str
    state_format: str
    state_dir: Path | None
    files: dict[str, str]
    scores: list[float]
    images: list[tuple[str, str]]  # validation good images (path, sha256)
    training: list[tuple[str, str]]  # images the bank was built from (path, sha256)


@dataclass
class _Lot:
    batch_id: int
    name: str
    started_at: datetime
    scores: list[float]
    verdicts: list[str]
    images: list[tuple[str, str]]
    state_version_id: int
    threshold: float
    mixed: list[str]


def _majority(values: list[Any]) -> Any:
    return Counter(values).most_common(1)[0][0]


class _Pred(NamedTuple):
    """The columns of a prediction the drift report reads (no regions, no ORM object)."""

    state_version_id: int
    threshold_id: int | None
    raw_score: float
    verdict: str
    image_path: str
    image_sha256: str


def _lot_predictions(session: Session, project_id: int) -> dict[int, list[_Pred]]:
    """Every lot's predictions in one query, in insertion order, columns only.

    One ORM load per lot (whole rows, regions JSON decoded) made this the slowest part of the
    Drift page: 100 lots x 200 predictions took 0.5 s; the plain column query ~0.05 s."""
    stmt = (select(Prediction.batch_id, Prediction.state_version_id, Prediction.threshold_id,
                   Prediction.raw_score, Prediction.verdict, Prediction.image_path,
                   Prediction.image_sha256)
            .join(Batch, Prediction.batch_id == Batch.id)
            .where(Batch.project_id == project_id)
            .order_by(Prediction.batch_id, Prediction.id))
    out: dict[int, list[_Pred]] = {}
    for row in session.execute(stmt).all():  # Rows: named access, no object per row
        out.setdefault(row.batch_id, []).append(row)  # type: ignore[arg-type]
    return out


def _read_lots(session: Session, project_id: int, thresholds: dict[int, float]) -> list[_Lot]:
    lots = []
    by_batch = _lot_predictions(session, project_id)
    for batch in repo.list_batches(session, project_id):
        if batch.name.startswith(VALIDATION_PREFIX):
            continue
        preds = by_batch.get(batch.id, [])
        if not preds:
            continue
        state = _majority([p.state_version_id for p in preds])
        used = [p for p in preds if p.state_version_id == state]
        threshold_id = _majority([p.threshold_id for p in used])
        if threshold_id is not None and threshold_id not in thresholds:
            row = repo.get_threshold(session, threshold_id)
            thresholds[threshold_id] = float(row.raw_value) if row else float("nan")
        mixed = []
        if len(used) < len(preds):
            mixed.append(f"{len(preds) - len(used)} of {len(preds)} images were scored with "
                         "another model version; the lot is judged on the majority's")
        lots.append(_Lot(batch.id, batch.name, batch.started_at,
                         [float(p.raw_score) for p in used], [p.verdict for p in used],
                         [(p.image_path, p.image_sha256) for p in used], state,
                         thresholds.get(threshold_id, float("nan")), mixed))
    return lots


def _state_chain(session: Session, state: StateVersion) -> list[int]:
    """The state and its ancestors (a rollback's parent is the state it restores)."""
    chain, seen = [], set()
    current: StateVersion | None = state
    while current is not None and current.id not in seen:
        seen.add(current.id)
        chain.append(current.id)
        current = (repo.get_state_version(session, current.parent_id)
                   if current.parent_id is not None else None)
    return chain


def _reference(ctx: Kensa, session: Session, project_id: int, state_id: int,
               numbers: dict[int, int]) -> _Reference:
    state = repo.get_state_version(session, state_id)
    if state is None:
        raise LookupError(f"state version {state_id} is gone")
    scores: list[float] = []
    for threshold in repo.list_thresholds(session, state_id):  # oldest first: as validated
        scores = [float(v) for v in threshold.params.get("normal_scores", ())]
        if scores:
            break
    labels = {i.sha256: i.label for i in repo.list_images(session, project_id)}
    images: list[tuple[str, str]] = []
    batch = repo.get_batch_by_name(session, project_id,
                                   validation_batch_name(state.model_version_id))
    chain = _state_chain(session, state)
    sources = set()
    for sid in chain:
        row = repo.get_state_version(session, sid)
        sources.update(row.source_images if row else [])
    if batch is not None:
        preds = repo.list_predictions(session, batch.id)
        images = [(p.image_path, p.image_sha256) for p in preds
                  if labels.get(p.image_sha256) == "good" and p.image_sha256 not in sources]
        if not scores:  # a state without stored normal scores: the validation batch's goods
            scores = [float(p.raw_score) for p in preds if labels.get(p.image_sha256) == "good"]
    records = session.execute(
        select(Provenance.path, Provenance.sha256)
        .where(Provenance.model_version_id == state.model_version_id,
               Provenance.state_version_id.in_(chain))
        .order_by(Provenance.record_id)).all()
    # the images each version was given (source_images), not the augmented copies a preset
    # added to the bank: those are the training's own variations, not parts from the line
    training = list(dict.fromkeys((str(p), str(s)) for p, s in records
                                  if not sources or str(s) in sources))
    if not training:
        paths = {i.sha256: i.path for i in repo.list_images(session, project_id)}
        training = [(paths[s], s) for s in state.source_images if s in paths]
    return _Reference(
        state.id, state.model_version_id,
        model_and_bank(numbers.get(state.model_version_id), state.version),
        state.state_format, ctx.resolve(state.directory), dict(state.files or {}), scores,
        images, training)


# --------------------------------------------------------------------------- image quality


class _QualityCache:
    """Per-image quality signals by sha256, kept in ``$KENSA_HOME/drift/quality-<id>.json``.

    A cached entry belongs to exact bytes (the sha256), so it never goes stale; a file that is
    gone or whose bytes changed is skipped (its scores came from other pixels)."""

    def __init__(self, ctx: Kensa, project_id: int) -> None:
        self.path = ctx.home / "drift" / f"quality-{project_id}.json"
        self.ctx = ctx
        self.dirty = False
        try:
            self.values: dict[str, list[float]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.values = {}

    def get(self, path: str, sha256: str) -> list[float] | None:
        if sha256 in self.values:
            return self.values[sha256]
        try:
            image, digest = load_image_and_sha256(self.ctx.resolve(path) or path)
        except (OSError, ImageLoadError):
            return None
        if digest != sha256:
            return None
        self.values[sha256] = image_quality(image).as_list()
        self.dirty = True
        return self.values[sha256]

    def signals(self, images: list[tuple[str, str]]) -> tuple[dict[str, list[float]], int]:
        """({signal: values}, images that could not be read)."""
        rows = [self.get(p, s) for p, s in images]
        found = [r for r in rows if r is not None]
        return ({name: [r[i] for r in found] for i, name in enumerate(SIGNALS)},
                len(rows) - len(found))

    def save(self) -> None:
        if self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, self.values)


# --------------------------------------------------------------------------- embedding


class _Embedder:
    """Loads each state's model once and caches the training images' features."""

    def __init__(self, ctx: Kensa) -> None:
        self.ctx = ctx
        self.models: dict[int, Any] = {}
        self.reference: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def why_not(self, ref: _Reference) -> str | None:
        try:
            caps = registry.spec(ref.state_format).capabilities
        except ValueError:
            return f"embedding drift not computed: unknown model {ref.state_format!r}"
        if Capability.MEMORY_BANK not in caps:
            return "embedding drift not computed: this model has no memory bank"
        return None

    def _model(self, ref: _Reference) -> Any:
        if ref.state_version_id not in self.models:
            self.models[ref.state_version_id] = registry.load(
                ref.state_format, ref.state_dir or ".", files=ref.files)
        return self.models[ref.state_version_id]

    def _features(self, model: Any, images: list[tuple[str, str]], seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(images))
        arrays = []
        for i in order:
            if len(arrays) >= EMBED_IMAGES:
                break
            path, sha = images[i]
            try:
                image, digest = load_image_and_sha256(self.ctx.resolve(path) or path)
            except (OSError, ImageLoadError):
                continue
            if digest == sha:
                arrays.append(image)
        if not arrays:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        return model_patch_features(model, arrays)

    def test(self, ref: _Reference, lot: _Lot) -> dict[str, float] | str:
        """The lot's MMD statistics, or a sentence saying why there are none."""
        reason = self.why_not(ref)
        if reason:
            return reason
        try:
            model = self._model(ref)
            if ref.state_version_id not in self.reference:
                self.reference[ref.state_version_id] = self._features(model, ref.training, 0)
            x, gx = self.reference[ref.state_version_id]
            y, gy = self._features(model, lot.images, lot.batch_id)
        except TypeError as exc:
            return f"embedding drift not computed: {exc}"
        if x.shape[0] == 0 or y.shape[0] == 0:
            return "embedding drift not computed: the training or lot images are not readable"
        result = mmd_permutation_test(x, y, gx, gy, max_samples=EMBED_VECTORS,
                                      seed=lot.batch_id)
        return {"mmd": result.mmd2, "p_value": result.p_value, "min_p": result.min_p,
                "images_reference": float(result.units_x), "images_lot": float(result.units_y)}


# --------------------------------------------------------------------------- judging


@dataclass
class _Alert:
    level: str  # "watch" | "drift"
    text: str


def _stats(d: UnivariateDrift) -> dict[str, float | None]:
    return {k: finite_or_none(v) for k, v in d.as_dict().items()}


def _pct(rel: float) -> str:
    return f"{abs(rel) * 100:.0f} %"


def _p(p: float) -> str:
    return f"p = {p:.2g}"


def _quality_alerts(tests: dict[str, UnivariateDrift]) -> list[_Alert]:
    out = []
    for name, d in tests.items():
        if not d.drift or d.relative_change is None:
            continue
        way = "rose" if d.relative_change > 0 else "fell"
        if abs(d.relative_change) >= QUALITY_MIN_CHANGE:
            out.append(_Alert("drift", f"{name} {way} {_pct(d.relative_change)} against the "
                                       f"reference images (KS {_p(d.ks_p)}): {ADVICE[name]}"))
        else:
            out.append(_Alert("watch", f"{name} {way} slightly ({_pct(d.relative_change)}, "
                                       f"KS {_p(d.ks_p)}): no action unless it keeps moving"))
    return out


def _chart_words(charts_: dict[str, ChartSeries], i: int, upper_only: set[str]
                 ) -> tuple[list[str], list[str]]:
    """(signals that mean drift, signals worth watching) of lot ``i``, one phrase per chart:
    "median score above its limits (rule 1, EWMA, CUSUM)". Rule 1, the EWMA and the CUSUM
    are strong signals; rules 2-4 alone are patterns worth watching."""
    strong, weak = [], []
    for metric, c in charts_.items():
        up_only = metric in upper_only
        rules = [r.split(":")[0] for r in c.rule_hits[i]]
        tags = list(rules)
        if c.ewma[i] > c.ewma_ucl[i] or (c.ewma[i] < c.ewma_lcl[i] and not up_only):
            tags.append("EWMA")
        if c.cusum_pos[i] > c.cusum_h or (c.cusum_neg[i] > c.cusum_h and not up_only):
            tags.append("CUSUM")
        if not tags:
            continue
        side = "above" if c.values[i] > c.center else "below"
        phrase = f"{METRIC_WORDS[metric]} {side} its limits ({', '.join(tags)})"
        (strong if set(tags) - {"rule 2", "rule 3", "rule 4"} else weak).append(phrase)
    return strong, weak


def _judge(lot: _Lot, ref: _Reference, score_test: UnivariateDrift | None,
           quality: dict[str, UnivariateDrift], embedding: dict[str, float] | None,
           chart_signals: tuple[list[str], list[str]]) -> tuple[str, list[str]]:
    alerts = _quality_alerts(quality)
    changed = [n for n, d in quality.items() if d.drift and d.relative_change is not None
               and abs(d.relative_change) >= QUALITY_MIN_CHANGE]
    cause = (f"the images changed too ({', '.join(changed)}): check the camera and the "
             "lighting before the process" if changed
             else "the images look as before, so the parts or the process changed")
    strong, weak = chart_signals
    # "lot 7" for a lot called 7, not "lot lot 7" for one called "lot 7"
    who = lot.name if lot.name.lower().startswith("lot") else f"lot {lot.name}"
    median = float(np.median(lot.scores))
    ref_median = float(np.median(ref.scores)) if ref.scores else float("nan")
    if score_test is not None and score_test.drift:
        way = "above" if score_test.shift > 0 else "below"
        extra = f"; {', '.join(strong)}" if strong else ""
        alerts.insert(0, _Alert("drift", f"{who} scores {way} the reference: median "
                                         f"{median:.3g} against {ref_median:.3g} (KS "
                                         f"{_p(score_test.ks_p)}){extra}: {cause}"))
    elif strong:
        alerts.insert(0, _Alert("drift", f"{who} is outside the control limits: "
                                         f"{', '.join(strong)}: {cause}"))
    elif score_test is not None and score_test.psi_reliable and score_test.psi >= PSI_WATCH:
        alerts.append(_Alert("watch", f"{who} scores moved a little (PSI "
                                      f"{score_test.psi:.2f}, {score_test.psi_level}): watch "
                                      "the next lots"))
    if weak:
        alerts.append(_Alert("watch", f"{who} control-chart pattern: "
                                      f"{', '.join(weak)}: watch the next lots"))
    if embedding is not None and embedding["p_value"] < 0.05:
        alerts.append(_Alert("drift", f"{who} looks unlike the training images in "
                                      f"the model's features (MMD {_p(embedding['p_value'])}): "
                                      "the parts or the view changed"))
    level = max((VERDICT_LEVEL[a.level] for a in alerts), default=0)
    alerts.sort(key=lambda a: -VERDICT_LEVEL[a.level])
    verdict = next(k for k, v in VERDICT_LEVEL.items() if v == level)
    return verdict, [a.text for a in alerts]


def _charts(lots: list[_Lot], ref: _Reference, threshold: float) -> dict[str, ChartSeries]:
    size = max(1, int(np.median([len(lot.scores) for lot in lots])))
    limits = {
        "median": charts.bootstrap_limits(ref.scores, size, np.median),
        "p95": charts.bootstrap_limits(ref.scores, size, charts.p95),
        "reject_rate": charts.reject_rate_limits(ref.scores, threshold, size),
    }
    values = {
        "median": [float(np.median(lot.scores)) for lot in lots],
        "p95": [float(np.percentile(lot.scores, 95)) for lot in lots],
        "reject_rate": [_reject_rate(lot) for lot in lots],
    }
    out = {}
    for metric in CHART_METRICS:
        lim, vals = limits[metric], values[metric]
        sides = ("upper",) if metric == "reject_rate" else ("upper", "lower")
        hits = (charts.western_electric(vals, lim, sides) if len(lots) >= 2
                else [[] for _ in vals])
        z, zu, zl = charts.ewma(vals, lim)
        pos, neg, h = charts.cusum(vals, lim)
        lcl = lim.line(-3)
        out[metric] = ChartSeries(metric, vals, lim.center, lim.sigma, lim.line(3),
                                  max(0.0, lcl) if metric == "reject_rate" else lcl,
                                  z, zu, zl, pos, neg, h, hits)
    return out


def _reject_rate(lot: _Lot) -> float:
    return lot.verdicts.count(Verdict.DEFECT.value) / max(1, len(lot.verdicts))


def _rows(lot: LotDrift, ref_id: int, tests: dict[str, UnivariateDrift],
          embedding: dict[str, float] | None, charts_: dict[str, ChartSeries], index: int,
          chart_ref: int) -> list[dict[str, Any]]:
    """The lot's ``drift_reports`` rows: one per statistic, the verdict row last."""
    base = {"reference_state_version_id": ref_id, "threshold": finite_or_none(lot.threshold)}
    rows = []
    for group, d in tests.items():
        info = {**base, "signal": group, "method": d.method, "n_reference": d.n_reference,
                "n_current": d.n_current, **_stats(d)}
        rows += [
            {"statistic": f"{group}_ks", "value": d.ks, "p_value": d.ks_p,
             "alert": d.drift and d.method == "ks", "details": info},
            {"statistic": f"{group}_psi", "value": d.psi, "p_value": None,
             "alert": d.psi_reliable and d.psi_level == "significant", "details": info},
            {"statistic": f"{group}_wasserstein", "value": d.wasserstein, "p_value": None,
             "alert": d.drift and d.method == "wasserstein_normed", "details": info},
        ]
    if embedding is not None:
        rows.append({"statistic": "embedding_mmd", "value": embedding["mmd"],
                     "p_value": embedding["p_value"], "alert": embedding["p_value"] < 0.05,
                     "details": {**base, **embedding}})
    for metric, c in charts_.items():
        signal = bool(c.rule_hits[index]) or not (c.ewma_lcl[index] <= c.ewma[index]
                                                  <= c.ewma_ucl[index]) \
            or max(c.cusum_pos[index], c.cusum_neg[index]) > c.cusum_h
        rows.append({"statistic": f"chart_{metric}", "value": c.values[index], "p_value": None,
                     "alert": signal, "details": {
                         **base, "chart_state_version_id": chart_ref, "center": c.center,
                         "sigma": c.sigma, "ucl": c.ucl, "lcl": c.lcl, "ewma": c.ewma[index],
                         "ewma_ucl": c.ewma_ucl[index], "ewma_lcl": c.ewma_lcl[index],
                         "cusum_pos": c.cusum_pos[index], "cusum_neg": c.cusum_neg[index],
                         "cusum_h": c.cusum_h, "rules": c.rule_hits[index]}})
    rows.append({"statistic": "verdict", "value": float(VERDICT_LEVEL[lot.verdict]),
                 "p_value": None, "alert": lot.verdict == "drift",
                 "details": {**base, "verdict": lot.verdict, "alerts": lot.alerts,
                             "notes": lot.notes, "quality_change": lot.quality_change,
                             "n_images": lot.n_images, "model": lot.model_label}})
    return rows


def _canonical(rows: list[dict[str, Any]]) -> str:
    """One lot's report rows as a string that is equal exactly when the rows are (the same
    statistics, values, alerts and details; NaN equal to NaN), whatever their order."""
    return json.dumps(sorted(
        [str(r["statistic"]), float(r["value"]),
         None if r["p_value"] is None else float(r["p_value"]), bool(r["alert"]),
         r.get("details") or {}] for r in rows
    ), sort_keys=True, default=float)


def _store(ctx: Kensa, reports: list[tuple[int, int, list[dict[str, Any]]]]) -> int:
    """Replace each lot's rows for the same reference, all lots in one transaction; returns
    how many lots were written.

    A lot whose stored report is already exactly the new one is left alone: the page
    recomputes the overview on every visit, and rewriting ~16 rows per lot for 100 unchanged
    lots took half of its 1 s budget (and churned ids) for nothing."""
    with ctx.session() as s:
        project_ids = {b.project_id for b in s.scalars(
            select(Batch).where(Batch.id.in_([r[0] for r in reports])))}
        stored: dict[tuple[int, Any], list[DriftReport]] = {}
        for pid in project_ids:  # one query for the project, not one per lot
            for r in repo.list_drift_reports(s, project_id=pid):
                ref = (r.details or {}).get("reference_state_version_id")
                stored.setdefault((r.batch_id, ref), []).append(r)
        changed = [(batch_id, ref_id, new) for batch_id, ref_id, new in reports
                   if _canonical(new) != _canonical([
                       {"statistic": r.statistic, "value": r.value, "p_value": r.p_value,
                        "alert": r.alert, "details": r.details}
                       for r in stored.get((batch_id, ref_id), [])])]
        rows = [{**row, "batch_id": batch_id} for batch_id, _, new in changed for row in new]
        if rows:  # one executemany: the ORM's unit of work took 0.2 s for 100 lots
            s.execute(insert(DriftReport), rows)
        # deleted after the insert, so SQLite (no AUTOINCREMENT) never hands an old id out again
        repo.delete_drift_reports(s, [r.id for batch_id, ref_id, _ in changed
                                      for r in stored.get((batch_id, ref_id), [])])
        return len(changed)


# --------------------------------------------------------------------------- the service


def _empty(project: str, headline: str, ref: _Reference | None = None) -> DriftOverview:
    return DriftOverview(project, ref.label if ref else "", len(ref.scores) if ref else 0,
                         list(ref.scores) if ref else [], [], {}, [], headline)


def drift_overview(ctx: Kensa, project: str, *, embedding: bool = True,
                   store: bool = True) -> DriftOverview:
    """Judge every lot of ``project`` against its reference; see the module docstring.

    ``embedding=False`` skips the MMD test (it loads the model and runs a forward pass per
    sampled image); ``store=False`` writes nothing (a preview). A project without lots gets
    an overview with ``lots=[]`` and a headline saying what to do.
    """
    with ctx.session(readonly=True) as s:
        project_row = require_project(s, project)
        numbers = model_numbers(s, project_row.id)
        try:
            active = active_model(ctx, s, project_row)
        except LookupError:
            active = None
        thresholds: dict[int, float] = {}
        lots = _read_lots(s, project_row.id, thresholds)
        state_ids = list(dict.fromkeys(lot.state_version_id for lot in lots))
        in_use = (active.bank_version_id if active is not None
                  else (state_ids[-1] if state_ids else None))
        if in_use is not None and in_use not in state_ids:
            state_ids.append(in_use)
        refs = {sid: _reference(ctx, s, project_row.id, sid, numbers) for sid in state_ids}
    name = project_row.name
    if in_use is None:
        return _empty(name, "No trained model and no lots yet: train a model, then score a "
                            "lot to compare it with the model's validation images.")
    chart_ref = refs[in_use]
    if not lots:
        return _empty(name, f"No lots yet: score a lot (Production lots page, or `score "
                            f"{name} PATH --batch LOT`) to compare it with the reference "
                            f"({chart_ref.label}).", chart_ref)
    if len(chart_ref.scores) < 2:
        return _empty(name, f"{chart_ref.label} has fewer than 2 validation good scores, so "
                            "there is no reference to compare lots with: retrain with more "
                            "good images.", chart_ref)

    threshold_in_use = active.rule.value if active is not None else lots[-1].threshold
    chart_series = _charts(lots, chart_ref, threshold_in_use)
    upper_only = {"reject_rate"}
    cache = _QualityCache(ctx, project_row.id)
    embedder = _Embedder(ctx) if embedding else None
    ref_quality: dict[int, tuple[dict[str, list[float]], int]] = {}
    prepared: dict[tuple[int, str], Reference] = {}
    results: list[LotDrift] = []
    reports = []
    for i, lot in enumerate(lots):
        ref = refs[lot.state_version_id]
        notes = list(lot.mixed)
        statistics: dict[str, dict[str, float | None]] = {}
        tests: dict[str, UnivariateDrift] = {}
        score_test = None
        if len(ref.scores) >= 2 and len(lot.scores) >= 2:
            score_test = tests["scores"] = compare(_prepared(prepared, ref.state_version_id,
                                                             "scores", ref.scores), lot.scores)
            statistics["scores"] = _stats(score_test)
        else:
            statistics["scores"] = {"ks": None, "ks_p": None, "psi": None, "wasserstein": None}
            notes.append("score tests need at least 2 images in the lot and the reference")
        if ref.state_version_id not in ref_quality:
            ref_quality[ref.state_version_id] = cache.signals(ref.images)
        ref_signals, _ = ref_quality[ref.state_version_id]
        lot_signals, unreadable = cache.signals(lot.images)
        if unreadable:
            notes.append(f"{unreadable} of {len(lot.images)} images could not be read again "
                         "(moved, deleted or changed) and are left out of the quality tests")
        quality: dict[str, UnivariateDrift] = {}
        for signal in SIGNALS:
            if len(ref_signals[signal]) >= 2 and len(lot_signals[signal]) >= 2:
                quality[signal] = tests[signal] = compare(_prepared(
                    prepared, ref.state_version_id, signal, ref_signals[signal]),
                                                          lot_signals[signal])
                statistics[signal] = _stats(quality[signal])
        if not quality:
            notes.append("image-quality tests need at least 2 readable images on each side")
        emb: dict[str, float] | None = None
        if embedder is not None:
            outcome = embedder.test(ref, lot)
            if isinstance(outcome, str):
                notes.append(outcome)
            else:
                emb = statistics["embedding"] = outcome
        if lot.state_version_id == in_use:
            signals = _chart_words(chart_series, i, upper_only)
        else:
            signals = ([], [])
            notes.append(f"scored with {ref.label}; control limits are those of "
                         f"{chart_ref.label}, so chart rules are not applied to this lot")
        verdict, alerts = _judge(lot, ref, score_test, quality, emb, signals)
        result = LotDrift(
            lot.name, lot.batch_id, lot.started_at, len(lot.scores),
            float(np.median(lot.scores)), float(np.percentile(lot.scores, 95)),
            _reject_rate(lot), ref.label, lot.state_version_id, lot.threshold,
            list(lot.scores), statistics,
            {k: float(v.relative_change) for k, v in quality.items()
             if v.relative_change is not None},
            verdict, alerts, notes)
        results.append(result)
        reports.append((lot.batch_id, ref.state_version_id,
                        _rows(result, ref.state_version_id, tests, emb, chart_series, i,
                              chart_ref.state_version_id)))
    cache.save()
    if store:
        _store(ctx, reports)
    changes = _changes(lots, refs)
    return DriftOverview(name, chart_ref.label, len(chart_ref.scores), list(chart_ref.scores),
                         results, chart_series, changes,
                         _headline(results, chart_ref, len(state_ids) > 1))


def _prepared(cache: dict[tuple[int, str], Reference], state_id: int, signal: str,
              values: list[float]) -> Reference:
    """One reference per (state version, signal), shared by every lot compared with it."""
    key = (state_id, signal)
    if key not in cache:
        cache[key] = reference(values)
    return cache[key]


def _changes(lots: list[_Lot], refs: dict[int, _Reference]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(1, len(lots)):
        before, now = lots[i - 1], lots[i]
        if now.state_version_id != before.state_version_id:
            out.append({"lot_index": i, "kind": "model",
                        "label": refs[now.state_version_id].label})
        elif not np.isclose(now.threshold, before.threshold, equal_nan=True):
            out.append({"lot_index": i, "kind": "threshold",
                        "label": f"threshold {before.threshold:.4g} → {now.threshold:.4g}"})
    return out


def _headline(lots: list[LotDrift], ref: _Reference, spans_versions: bool) -> str:
    """Verdict words first, then the lots that carry it, then what qualifies the charts."""
    n = len(lots)
    drift = [lot for lot in lots if lot.verdict == "drift"]
    watch = [lot for lot in lots if lot.verdict == "watch"]
    if drift:
        latest = drift[-1]
        text = (f"Drift in {len(drift)} of {n} lots ({', '.join(x.name for x in drift)}): "
                f"{latest.alerts[0]}.")
    elif watch:
        text = (f"Watch: {len(watch)} of {n} lots differ a little from the reference "
                f"({', '.join(x.name for x in watch)}): {watch[-1].alerts[0]}.")
    else:
        text = (f"Stable: {'the lot matches' if n == 1 else f'all {n} lots match'} the "
                f"reference ({ref.label}, {len(ref.scores)} validation good images).")
    if n < 2:
        text += " Control-chart rules need at least 2 lots."
    if spans_versions:
        text += (f" The lots span model versions: each lot is tested against its own "
                 f"version's reference, the charts use {ref.label} (in use).")
    return text


__all__ = ["ChartSeries", "DriftOverview", "LotDrift", "drift_overview"]
