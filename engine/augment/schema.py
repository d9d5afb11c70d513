"""Augmentation configs: the offered transforms, validation of a JSON config, the pipeline.

A config is plain JSON (``{"version": 1, "seed": 0, "transforms": [{"name", "p", "params"}]}``)
so it can be stored with a model and edited on a page by someone who is not a programmer. Each
offered transform exposes only a few sliders (:class:`ParamSpec`) whose names ARE the
albumentations 2.x argument names - the built pipeline, its ``A.to_dict`` form and the sliders
say the same thing - while everything a user should not have to think about (border handling,
nearest-neighbour masks) is fixed here. Defaults are mild: what an inspection camera really
produces from shot to shot, not the heavy augmentations of natural-image training.

Validation collects every problem with the field path that caused it, so a hand-edited config
is fixed in one go rather than one error at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np

from engine.augment import synthetic as defects

CONFIG_VERSION = 1
SEED_MAX = 2**32 - 1

ParamKind = Literal["float", "int", "float_range", "int_range", "choice", "bool"]
Group = Literal["geometric", "light", "camera", "synthetic"]


class AugmentConfigError(ValueError):
    """A config that cannot be used; ``problems`` lists each one, prefixed by its field path."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class ParamSpec:
    """One slider: the albumentations argument ``name`` with its allowed values."""

    name: str
    kind: ParamKind
    title: str
    help: str
    default: Any
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class TransformSpec:
    """An offered transform: albumentations-like class ``name`` and its few sliders."""

    name: str
    group: Group
    title: str
    help: str
    params: tuple[ParamSpec, ...]
    default_p: float
    moves_pixels: bool


@dataclass(frozen=True)
class TransformStep:
    """One step of a config: which transform, how often (``p``) and its slider values."""

    name: str
    p: float
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AugmentConfig:
    """A validated config (build it with :func:`validate_config`)."""

    seed: int
    transforms: tuple[TransformStep, ...]

    def to_json(self) -> dict[str, Any]:
        return {"version": CONFIG_VERSION, "seed": self.seed,
                "transforms": [{"name": s.name, "p": s.p, "params": _jsonable(s.params)}
                               for s in self.transforms]}

    @property
    def has_synthetic(self) -> bool:
        return any(TRANSFORMS[s.name].group == "synthetic" for s in self.transforms)


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


# ----------------------------------------------------------------------------- the catalogue

_REFLECT = cv2.BORDER_REFLECT_101
_NEAREST = cv2.INTER_NEAREST


def _frange(name: str, title: str, help_: str, default: tuple[float, float], lo: float,
            hi: float, step: float) -> ParamSpec:
    return ParamSpec(name, "float_range", title, help_, default, lo, hi, step)


def _irange(name: str, title: str, help_: str, default: tuple[int, int], lo: int, hi: int,
            step: int = 1) -> ParamSpec:
    return ParamSpec(name, "int_range", title, help_, default, lo, hi, step)


_SYNTHETIC_PARAMS = (
    _frange("area", "Defect size (0.01 = 1 % of the picture)",
            "Share of the picture the defect covers (0.01 = 1 %).",
            (0.005, 0.03), defects.AREA_RANGE[0], defects.AREA_RANGE[1], 0.0005),
    _frange("contrast", "Defect strength",
            "How strongly the defect stands out from the surface around it (1 = strongest).",
            (0.3, 0.7), 0.05, 1.0, 0.05),
)

_SPECS: tuple[TransformSpec, ...] = (
    # geometric: the part lies a little differently; masks move with it
    TransformSpec("HorizontalFlip", "geometric", "Mirror left-right",
                  "Mirror the picture left to right, for parts that look the same mirrored.",
                  (), 0.5, True),
    TransformSpec("VerticalFlip", "geometric", "Mirror top-bottom",
                  "Mirror the picture top to bottom, for parts that look the same mirrored.",
                  (), 0.5, True),
    TransformSpec("SquareSymmetry", "geometric", "Quarter turns and mirrors",
                  "Turn by 90° steps and/or mirror, for parts without a preferred direction. "
                  "Non-square pictures swap width and height when turned.", (), 0.5, True),
    TransformSpec("Affine", "geometric", "Shift, turn and zoom slightly",
                  "Small placement changes, as when the part sits a little differently.",
                  (_frange("rotate", "Turn (degrees)", "Range of the turn angle.",
                           (-5.0, 5.0), -180.0, 180.0, 1.0),
                   _frange("translate_percent", "Shift (share of size)",
                           "Range of the shift, as a share of the picture size.",
                           (-0.03, 0.03), -0.25, 0.25, 0.01),
                   _frange("scale", "Zoom", "Range of the zoom factor (1 = unchanged).",
                           (0.95, 1.05), 0.5, 1.5, 0.01)), 0.5, True),
    TransformSpec("Perspective", "geometric", "Tilt",
                  "A slight perspective change, as when the camera or part is tilted.",
                  (_frange("scale", "Tilt strength", "How far the corners may move.",
                           (0.01, 0.03), 0.0, 0.2, 0.005),), 0.3, True),
    TransformSpec("ElasticTransform", "geometric", "Gentle warp",
                  "A soft, wavy distortion, for flexible parts like fabric or leather.",
                  (ParamSpec("alpha", "float", "Warp strength", "How far pixels move.",
                             30.0, 0.0, 300.0, 1.0),
                   ParamSpec("sigma", "float", "Warp smoothness",
                             "Larger is smoother, wider waves.", 8.0, 2.0, 50.0, 0.5)),
                  0.2, True),
    # light and colour: the lamp, the exposure and the surface finish vary
    TransformSpec("RandomBrightnessContrast", "light", "Brightness and contrast",
                  "The picture gets a bit lighter or darker and flatter or punchier.",
                  (_frange("brightness_limit", "Brightness change",
                           "Range of the brightness change (0.1 = 10 %).",
                           (-0.1, 0.1), -0.5, 0.5, 0.01),
                   _frange("contrast_limit", "Contrast change",
                           "Range of the contrast change (0.1 = 10 %).",
                           (-0.1, 0.1), -0.5, 0.5, 0.01)), 0.5, False),
    TransformSpec("RandomGamma", "light", "Exposure curve",
                  "Brightens or darkens mid-tones more than the extremes (gamma, 100 = none).",
                  (_frange("gamma_limit", "Gamma (100 = unchanged)", "Range of the gamma.",
                           (90.0, 110.0), 50.0, 200.0, 1.0),), 0.3, False),
    TransformSpec("ColorJitter", "light", "Colour shift",
                  "Small changes of brightness, contrast, colour strength and hue.",
                  (_frange("brightness", "Brightness factor", "1 = unchanged.",
                           (0.9, 1.1), 0.0, 2.0, 0.01),
                   _frange("contrast", "Contrast factor", "1 = unchanged.",
                           (0.9, 1.1), 0.0, 2.0, 0.01),
                   _frange("saturation", "Colour strength factor", "1 = unchanged.",
                           (0.9, 1.1), 0.0, 2.0, 0.01),
                   _frange("hue", "Hue shift", "Range of the hue shift (0 = unchanged).",
                           (-0.02, 0.02), -0.5, 0.5, 0.01)), 0.3, False),
    TransformSpec("CLAHE", "light", "Local contrast boost",
                  "Evens out lighting by boosting contrast locally (CLAHE).",
                  (_frange("clip_limit", "Boost strength", "Higher boosts more.",
                           (1.0, 2.0), 1.0, 8.0, 0.5),), 0.2, False),
    TransformSpec("Illumination", "light", "Uneven lighting",
                  "A soft light gradient or spot, as from a lamp off to one side.",
                  (_frange("intensity_range", "Strength", "How much lighter or darker.",
                           (0.01, 0.1), 0.0, 0.5, 0.01),
                   ParamSpec("mode", "choice", "Shape",
                             "Gradient across the picture, from a corner, or a round spot.",
                             "linear", choices=("linear", "corner", "gaussian"))), 0.3, False),
    TransformSpec("PlasmaShadow", "light", "Cloudy shadows",
                  "Soft, cloud-like darker areas, as from dirt on a cover glass or stray light.",
                  (_frange("shadow_intensity_range", "Darkness", "How dark the shadows get.",
                           (0.05, 0.2), 0.0, 1.0, 0.05),
                   ParamSpec("roughness", "float", "Cloudiness",
                             "Higher gives smaller, busier clouds.", 3.0, 0.5, 5.0, 0.1)),
                  0.2, False),
    TransformSpec("RandomShadow", "light", "Cast shadows",
                  "Sharp-edged shadow shapes, as from a fixture or a hand.",
                  (_frange("shadow_intensity_range", "Darkness", "How dark the shadows get.",
                           (0.1, 0.3), 0.0, 1.0, 0.05),
                   _irange("num_shadows_limit", "Number of shadows",
                           "Range of how many shadows.", (1, 1), 1, 4)), 0.1, False),
    # camera: sensor noise, focus, motion, compression
    TransformSpec("GaussNoise", "camera", "Sensor noise",
                  "Fine random grain, as in pictures taken with little light.",
                  (_frange("std_range", "Noise strength",
                           "Range of the noise level, as a share of full brightness.",
                           (0.01, 0.03), 0.0, 0.3, 0.005),
                   ParamSpec("per_channel", "bool", "Coloured grain",
                             "Different grain per colour; off keeps grey parts grey.", False)),
                  0.3, False),
    TransformSpec("ISONoise", "camera", "High-ISO noise",
                  "Colourful grain of a camera set to high sensitivity.",
                  (_frange("intensity", "Noise strength", "Range of the grain strength.",
                           (0.05, 0.2), 0.0, 1.0, 0.05),
                   _frange("color_shift", "Colour speckle", "Range of the colour variation.",
                           (0.01, 0.03), 0.0, 0.2, 0.01)), 0.2, False),
    TransformSpec("MotionBlur", "camera", "Motion blur",
                  "Streaky blur, as when the part moves on a conveyor during exposure.",
                  (_irange("blur_limit", "Blur length (pixels)",
                           "Range of the streak length; odd numbers.", (3, 5), 3, 31, 2),),
                  0.2, False),
    TransformSpec("Defocus", "camera", "Out of focus",
                  "Soft, round blur of a lens slightly out of focus.",
                  (_irange("radius", "Blur size (pixels)", "Range of the blur radius.",
                           (1, 3), 1, 20),), 0.2, False),
    TransformSpec("GaussianBlur", "camera", "Soft blur",
                  "A slight overall softness.",
                  (_frange("sigma_limit", "Blur size", "Range of the blur strength.",
                           (0.3, 1.0), 0.1, 5.0, 0.1),), 0.2, False),
    TransformSpec("ImageCompression", "camera", "JPEG artefacts",
                  "Blocky artefacts of compressed pictures (100 = best quality).",
                  (_irange("quality_range", "Quality", "Range of the JPEG quality.",
                           (70, 95), 10, 100),), 0.2, False),
    # synthetic defects: made-up anomalies with exact masks
    TransformSpec("PerlinDefect", "synthetic", "Stain (Perlin)",
                  "Irregular blotch with a made-up texture, like a stain or corrosion (DRAEM).",
                  _SYNTHETIC_PARAMS, 0.5, False),
    TransformSpec("CutPaste", "synthetic", "Moved patch (CutPaste)",
                  "A rectangle of the picture copied elsewhere, slightly lighter or darker.",
                  _SYNTHETIC_PARAMS, 0.5, False),
    TransformSpec("CutPasteScar", "synthetic", "Scratch (CutPaste scar)",
                  "A thin, turned strip of the picture copied elsewhere, like a scratch.",
                  _SYNTHETIC_PARAMS, 0.5, False),
    TransformSpec("SeamlessPatch", "synthetic", "Blended patch (NSA)",
                  "A piece of another good picture blended in seamlessly: a subtle defect.",
                  _SYNTHETIC_PARAMS, 0.5, False),
)

TRANSFORMS: dict[str, TransformSpec] = {spec.name: spec for spec in _SPECS}

# arguments no user should have to choose: reflect at borders, masks stay binary
_FIXED: dict[str, dict[str, Any]] = {
    "Affine": {"border_mode": _REFLECT, "mask_interpolation": _NEAREST},
    "Perspective": {"border_mode": _REFLECT, "mask_interpolation": _NEAREST, "keep_size": True},
    "ElasticTransform": {"border_mode": _REFLECT, "mask_interpolation": _NEAREST},
    "CLAHE": {"tile_grid_size": (8, 8)},
    "RandomShadow": {"shadow_roi": (0.0, 0.0, 1.0, 1.0)},
    "GaussianBlur": {"blur_limit": 0},
    "ImageCompression": {"compression_type": "jpeg"},
}

# ----------------------------------------------------------------------------- validation

_TOP_KEYS = {"version", "seed", "transforms"}
_STEP_KEYS = {"name", "p", "params"}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_param(path: str, spec: ParamSpec, value: Any, problems: list[str]) -> Any:
    """The value in canonical form (tuples for ranges), or None after recording a problem."""
    bounds = f"[{spec.min}, {spec.max}]"

    def in_bounds(v: float) -> bool:
        return (spec.min is None or v >= spec.min) and (spec.max is None or v <= spec.max)

    if spec.kind in ("float", "int"):
        ok_type = _is_int(value) if spec.kind == "int" else _is_number(value)
        if not ok_type:
            problems.append(f"{path}: expected {'an integer' if spec.kind == 'int' else 'a number'}"
                            f", got {value!r}")
            return None
        if not in_bounds(value):
            problems.append(f"{path}: {value!r} is outside {bounds}")
            return None
        return float(value) if spec.kind == "float" else int(value)
    if spec.kind in ("float_range", "int_range"):
        check = _is_int if spec.kind == "int_range" else _is_number
        what = "integers" if spec.kind == "int_range" else "numbers"
        if not isinstance(value, list | tuple) or len(value) != 2 or not all(map(check, value)):
            problems.append(f"{path}: expected [low, high], two {what}, got {value!r}")
            return None
        low, high = value
        if low > high:
            problems.append(f"{path}: low {low!r} is greater than high {high!r}")
            return None
        if not (in_bounds(low) and in_bounds(high)):
            problems.append(f"{path}: {list(value)!r} is outside {bounds}")
            return None
        if spec.kind == "int_range" and spec.step == 2 and spec.min is not None and (
                (low - spec.min) % 2 or (high - spec.min) % 2):
            problems.append(f"{path}: {list(value)!r} must be odd numbers")
            return None
        cast = int if spec.kind == "int_range" else float
        return (cast(low), cast(high))
    if spec.kind == "choice":
        if value not in spec.choices:
            problems.append(f"{path}: must be one of {', '.join(map(str, spec.choices))}, "
                            f"got {value!r}")
            return None
        return value
    if not isinstance(value, bool):
        problems.append(f"{path}: expected true or false, got {value!r}")
        return None
    return value


def _check_step(index: int, raw: Any, problems: list[str]) -> TransformStep | None:
    path = f"transforms[{index}]"
    if not isinstance(raw, dict):
        problems.append(f"{path}: expected an object with name, p and params, got {raw!r}")
        return None
    found = len(problems)
    for key in sorted(set(raw) - _STEP_KEYS):
        problems.append(f"{path}.{key}: unknown field (allowed: name, p, params)")
    name = raw.get("name")
    spec = TRANSFORMS.get(name) if isinstance(name, str) else None
    p = raw.get("p", spec.default_p if spec else 0.5)
    if not _is_number(p) or not 0 <= p <= 1:
        problems.append(f"{path}.p: must be a probability in [0, 1], got {p!r}")
    if spec is None:
        problems.append(f"{path}.name: unknown transform {name!r} "
                        f"(known: {', '.join(TRANSFORMS)})")
        return None
    params_raw = raw.get("params", {})
    params: dict[str, Any] = {}
    if not isinstance(params_raw, dict):
        problems.append(f"{path}.params: expected an object, got {params_raw!r}")
        params_raw = {}
    known = {ps.name: ps for ps in spec.params}
    for key in sorted(set(params_raw) - set(known)):
        allowed = ", ".join(known) or "none"
        problems.append(f"{path}.params.{key}: unknown parameter of {name} (allowed: {allowed})")
    for ps in spec.params:
        value = params_raw.get(ps.name, ps.default)
        params[ps.name] = _check_param(f"{path}.params.{ps.name}", ps, value, problems)
    if len(problems) > found:
        return None
    step = TransformStep(name, float(p), params)
    try:  # the library's own checks, for combinations the sliders cannot express
        _make(step, donors=())
    except Exception as exc:  # noqa: BLE001 - any refusal becomes a named problem
        problems.append(f"{path}.params: albumentations refused {name}: {exc}")
        return None
    return step


def validate_config(raw: Any) -> AugmentConfig:
    """``raw`` (parsed JSON) as an :class:`AugmentConfig`; raises :class:`AugmentConfigError`
    listing every bad field. Missing ``p`` or params take the transform's defaults."""
    if not isinstance(raw, dict):
        raise AugmentConfigError([f"config: expected an object, got {type(raw).__name__}"])
    problems: list[str] = []
    for key in sorted(set(raw) - _TOP_KEYS):
        problems.append(f"{key}: unknown field (allowed: version, seed, transforms)")
    if "version" not in raw:
        problems.append(f"version: missing (expected {CONFIG_VERSION})")
    elif raw["version"] != CONFIG_VERSION or isinstance(raw["version"], bool):
        problems.append(f"version: expected {CONFIG_VERSION}, got {raw['version']!r}")
    seed = raw.get("seed")
    if "seed" not in raw:
        problems.append("seed: missing (an integer)")
    elif not _is_int(seed) or not 0 <= seed <= SEED_MAX:
        problems.append(f"seed: expected an integer in [0, {SEED_MAX}], got {seed!r}")
    steps: list[TransformStep] = []
    if "transforms" not in raw:
        problems.append("transforms: missing (a list of steps)")
    elif not isinstance(raw["transforms"], list):
        problems.append(f"transforms: expected a list, got {type(raw['transforms']).__name__}")
    else:
        for index, item in enumerate(raw["transforms"]):
            step = _check_step(index, item, problems)
            if step is not None:
                steps.append(step)
    if problems:
        raise AugmentConfigError(problems)
    return AugmentConfig(seed=int(seed), transforms=tuple(steps))


def default_step(name: str) -> TransformStep:
    """The step ``name`` with its spec defaults (raises KeyError naming unknown transforms)."""
    if name not in TRANSFORMS:
        raise KeyError(f"unknown transform {name!r}")
    spec = TRANSFORMS[name]
    return TransformStep(name, spec.default_p, {ps.name: ps.default for ps in spec.params})


# ----------------------------------------------------------------------------- pipeline


def _make(step: TransformStep, donors: Sequence[np.ndarray]) -> A.BasicTransform:
    kwargs = {**_FIXED.get(step.name, {}), **step.params, "p": step.p}
    if step.name in defects.SYNTHETIC_TRANSFORMS:
        cls = defects.SYNTHETIC_TRANSFORMS[step.name]
        if cls is defects.SeamlessPatch:
            kwargs["donors"] = list(donors)
        return cls(**kwargs)
    return getattr(A, step.name)(**kwargs)


def build_pipeline(config: AugmentConfig, *, donors: Sequence[np.ndarray] = (),
                   synthetic: bool = True) -> A.Compose:
    """The seeded albumentations pipeline of ``config``.

    ``synthetic=False`` leaves out the synthetic-defect steps (for training copies, where a
    painted defect would be learnt as normal). ``donors`` are good images for SeamlessPatch.
    Masks use nearest-neighbour interpolation everywhere, so a binary mask stays binary.
    """
    steps = [s for s in config.transforms
             if synthetic or TRANSFORMS[s.name].group != "synthetic"]
    pipeline = A.Compose([_make(s, donors) for s in steps], seed=config.seed,
                         save_applied_params=True, mask_interpolation=_NEAREST)
    return seed_pipeline(pipeline, config.seed)


def seed_pipeline(pipeline: A.Compose, seed: int) -> A.Compose:
    """Give each step of ``pipeline`` its own generator derived from ``seed``; returns it.

    ``A.Compose(seed=...)`` seeds every step with the SAME seed, so all steps draw the same
    numbers: equal probabilities fire together and e.g. brightness and gamma move in lockstep.
    Use this on a pipeline rebuilt with ``A.from_dict`` too, to get the same pixels back.
    """
    pipeline.set_random_seed(seed)
    for index, transform in enumerate(pipeline.transforms):
        child = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        transform.set_random_seed(child)
    return pipeline


def serialize(config: AugmentConfig) -> dict[str, Any]:
    """Both forms for storage: Kensa's JSON (what the page edits) and ``A.to_dict`` (what ran)."""
    return {"kensa": config.to_json(), "albumentations": A.to_dict(build_pipeline(config))}


def deserialize(stored: Any) -> AugmentConfig:
    """The config stored by :func:`serialize`; validates ``stored["kensa"]``."""
    if not isinstance(stored, dict) or "kensa" not in stored:
        raise AugmentConfigError(["kensa: missing (the stored augmentation config)"])
    try:
        return validate_config(stored["kensa"])
    except AugmentConfigError as exc:
        raise AugmentConfigError([f"kensa.{p}" for p in exc.problems]) from exc
