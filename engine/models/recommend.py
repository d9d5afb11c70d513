"""Which detector to try first: the decision table of the original notes, as a pure function.

The table is a PRIOR, not a verdict. It orders the candidates of a comparison and names the
model the Training page proposes before anything was measured; a comparison on the project's
own held-out images (``services.training.compare``) then overrides it with :func:`pick`.

What the table knows, per model family (few images -> PatchCore; real time -> PaDiM or
EfficientAd; textures -> the flow and reconstruction models; objects -> PatchCore):

* how many good images a model needs before its statistics or its training loop are sound
  (a memory bank works from one image; a Gaussian per position needs a few dozen; a
  normalising flow or a reconstruction network needs a hundred or more);
* how fast it scores (a Gaussian per position is a matrix product; a memory bank is a nearest
  neighbour search; a flow is several network passes);
* whether it is known to be strong on textures (surfaces that look the same everywhere) or on
  objects (a part whose layout matters).

Texture or object is NOT guessed from the images here: no cheap statistic we tried tells a
brushed-metal part from a magnetic tile reliably, and a wrong guess would reorder the table
for the wrong reason. Callers that know pass ``texture=True/False``; the Training page passes
None and leaves that question to measurement.

Only the models passed in (by default the registered ones) are ever named, so a model that is
not installed is never recommended. A registered model the table does not know comes last,
with a reason that says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: "Few images": the range the few-shot memory bank is made for (the Training page's words).
FEW_GOOD = 50
#: Two image AUROCs closer than this count as equally good when picking (one defect image in
#: a hundred changes AUROC by about this much), so the faster model wins.
AUROC_TIE = 0.01


@dataclass(frozen=True)
class Traits:
    """What the decision table knows about one model family."""

    #: 0..2: how it ranks on industrial benchmarks (MVTec AD) when it has the data it needs
    accuracy: float
    #: good images it needs before its statistics or training are sound
    min_good: int
    #: 0: fast enough for real-time inspection, 1: tens of ms per image on a CPU, 2: slow
    speed: int
    textures: bool
    objects: bool
    #: an optimisation loop with epochs (minutes to train), not one pass over the images
    trained: bool
    #: what it does, in a few plain words
    what: str


_PATCHES = "remembers good patches and compares every patch with them"
#: Keyed by the model family: ``kensa_patchcore`` as is, ``anomalib_<family>`` without the
#: prefix and underscores (``anomalib_efficient_ad`` -> ``efficientad``).
TABLE: Mapping[str, Traits] = {
    "kensa_patchcore": Traits(2, 1, 1, True, True, False, _PATCHES),
    "patchcore": Traits(2, 1, 1, True, True, False, _PATCHES),
    "padim": Traits(1, 20, 0, True, False, False,
                    "fits one Gaussian per image position; fast, best when parts are aligned"),
    "dfm": Traits(0.5, 20, 0, False, False, False,
                  "models whole-image features with PCA; fast, coarse maps"),
    "dfkde": Traits(0, 50, 0, False, False, False,
                    "estimates the density of whole-image features; fast, coarse maps"),
    "cflow": Traits(1.5, 100, 2, True, True, True,
                    "trains a normalising flow on patch features"),
    "fastflow": Traits(1, 100, 0, True, False, True,
                       "trains a light normalising flow on patch features"),
    "csflow": Traits(1, 100, 1, True, False, True,
                     "trains a normalising flow across feature scales"),
    "draem": Traits(1, 100, 1, True, False, True,
                    "trains a network to repair painted defects"),
    "efficientad": Traits(2, 100, 0, True, True, True,
                          "trains a small student network to copy a teacher"),
    "stfpm": Traits(1, 100, 0, True, False, True,
                    "trains a student network to copy a teacher's features"),
    "reversedistillation": Traits(1.5, 100, 1, True, True, True,
                                  "trains a decoder to rebuild a teacher's features"),
    "cfa": Traits(1.5, 100, 1, True, True, True,
                  "trains a patch descriptor around remembered good features"),
    "dinomaly": Traits(2, 100, 2, True, True, True,
                       "trains a decoder on a large vision transformer's features"),
    "supersimplenet": Traits(1.5, 100, 0, True, True, True,
                             "trains a small discriminator on features with painted defects"),
    "winclip": Traits(0.5, 1, 2, True, True, False,
                      "compares image patches with words and a few good images (CLIP)"),
}


def family(model: str) -> str:
    """The table key of a registry name (``anomalib_efficient_ad`` -> ``efficientad``)."""
    if model.startswith("anomalib_"):
        return model.removeprefix("anomalib_").replace("_", "")
    return model


def _default_models() -> list[str]:
    from engine.models import registry

    return registry.names()


def prior(n_good: int, n_defect: int, *, realtime: bool = False, texture: bool | None = None,
          models: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``models`` (default: every registered model) ranked by the decision table, best first,
    each with its reason in one or two plain sentences.

    ``n_good``: good images the model would learn from; ``n_defect``: defect images to measure
    on (none needed to train; without any, a comparison measures on painted defects);
    ``realtime``: scoring speed matters more than the last point of accuracy; ``texture``:
    True for surfaces, False for objects, None when unknown (left to measurement).
    """
    names = list(_default_models() if models is None else models)
    ranked: list[tuple[float, int, str, str]] = []
    for order, name in enumerate(names):
        traits = TABLE.get(family(name))
        if traits is None:
            ranked.append((-10.0, order, name, "Not in the decision table: only a comparison "
                                               "on this project's images can place it."))
            continue
        score, words = traits.accuracy, [f"It {traits.what}."]
        if traits.accuracy >= 2:
            words.append("Among the most accurate on industrial benchmarks (MVTec AD).")
        if n_good < traits.min_good:
            score -= 3
            words.append(f"It needs about {traits.min_good} good images to learn from; this "
                         f"project has {n_good}.")
        elif n_good <= FEW_GOOD and traits.min_good <= 1:
            score += 1
            words.append(f"Made for few images: it learns from as few as one, and this "
                         f"project has {n_good}.")
        elif traits.min_good > 1:
            words.append(f"With {n_good} good images it has enough to learn from.")
        if realtime:
            score += {0: 2, 1: 0, 2: -2}[traits.speed]
            words.append({0: "Fast enough for real-time inspection.",
                          1: "Tens of milliseconds per image on a CPU.",
                          2: "Slow to score: several network passes per image."}[traits.speed])
        if texture is True and traits.textures:
            score += 1
            words.append("Strong on textures.")
        elif texture is False and traits.objects:
            score += 1
            words.append("Strong on objects whose layout matters.")
        if traits.trained:
            score -= 0.5
            words.append("Training runs for epochs: minutes rather than seconds.")
        if name == "kensa_patchcore":
            score += 0.25  # Kensa's own: grows its bank later and shows its evidence
        ranked.append((score, order, name, " ".join(words)))
    ranked.sort(key=lambda r: (-r[0], r[1]))
    out = [(name, reason) for _, _, name, reason in ranked]
    if not n_defect and out:
        name, reason = out[0]
        out[0] = (name, reason + " No defect image is held out, so a comparison measures on "
                                 "synthetic defects painted into good images.")
    return out


# --------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class Measured:
    """One candidate's measured numbers (``image_auroc`` None when it failed)."""

    model: str
    title: str
    image_auroc: float | None
    ms_per_image: float | None
    error: str | None = None


def _times(slow: float, fast: float) -> str:
    """"4× faster", "1.5× faster" or "slightly faster": rounded so it does not look precise."""
    if fast <= 0 or slow <= 0:
        return "faster"
    ratio = slow / fast
    if ratio < 1.1:
        return "slightly faster"
    return f"{ratio:.0f}× faster" if ratio >= 3 else f"{ratio:.1f}× faster"


def pick(rows: Sequence[Measured], order: Sequence[str] = (), synthetic: bool = False,
         prior_first: str | None = None) -> tuple[str | None, str]:
    """The measured pick and why, in words: the best image AUROC, and within
    :data:`AUROC_TIE` of it the fastest (ms per image); the prior ``order`` breaks exact
    ties. ``synthetic``: the AUROCs were measured on painted defects (said in the reason).
    ``prior_first``: the model the prior proposed (the reason says when measurement
    overrode it). Returns ``(None, why)`` when no candidate could be measured.
    """
    rank = {m: i for i, m in enumerate(order)}
    ok = [r for r in rows if r.error is None and r.image_auroc is not None]
    if not ok:
        failed = [r for r in rows if r.error]
        why = f" ({failed[0].title}: {failed[0].error})" if failed else ""
        return None, "No model could be measured" + why + "."
    best = max(r.image_auroc for r in ok)  # type: ignore[type-var]
    close = [r for r in ok if r.image_auroc >= best - AUROC_TIE]  # type: ignore[operator]

    def speed(r: Measured) -> tuple[float, int]:
        ms = r.ms_per_image if r.ms_per_image is not None else float("inf")
        return ms, rank.get(r.model, len(rank))

    chosen = min(close, key=speed)
    top = max(ok, key=lambda r: (r.image_auroc, -speed(r)[1]))  # type: ignore[arg-type]
    auroc = f"image AUROC {chosen.image_auroc:.2f}"
    if len(ok) == 1:
        why = f"{chosen.title}: {auroc}, the only model that could be measured"
    elif chosen is not top:
        why = (f"{chosen.title}: {auroc}, as good as {top.title} ({top.image_auroc:.2f}) "
               f"within {AUROC_TIE:g} and {_times(top.ms_per_image or 0, chosen.ms_per_image or 0)}"
               f" ({chosen.ms_per_image:.0f} vs {top.ms_per_image:.0f} ms per image)")
    else:
        others = [r for r in close if r is not chosen]
        if others:
            slow = max(others, key=lambda r: r.ms_per_image or 0)
            why = (f"{chosen.title}: the best {auroc}, and "
                   f"{_times(slow.ms_per_image or 0, chosen.ms_per_image or 0)} than "
                   f"{slow.title} ({slow.image_auroc:.2f}), which is as good within "
                   f"{AUROC_TIE:g}")
        else:
            second = max((r for r in ok if r is not chosen),
                         key=lambda r: r.image_auroc)  # type: ignore[arg-type,return-value]
            why = (f"{chosen.title}: the best {auroc}, ahead of {second.title} "
                   f"({second.image_auroc:.2f})")
    why += "."
    if prior_first is not None and prior_first != chosen.model:
        first = next((r.title for r in rows if r.model == prior_first), prior_first)
        why += f" Measured on this project, it beats the table's first choice, {first}."
    if synthetic:
        why += (" No defect image was held out, so these numbers come from synthetic defects "
                "painted into held-out good images; add real defect images to measure on them.")
    return chosen.model, why
