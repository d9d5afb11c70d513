"""Augmentation preview and synthetic defects: configs, pipelines and made-up anomalies.

Pages and services import from here; see :mod:`engine.augment.schema` for configs and pipelines,
:mod:`engine.augment.synthetic` for the defects and :mod:`engine.augment.preview` for applying a
config to images.

The names are loaded on first use (PEP 562): albumentations imports torch, which costs seconds,
and modules that only need :mod:`engine.augment.stress`'s names and levels (the Evaluation
page) or :mod:`engine.augment.calibration`'s constants must not pay for it.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# albumentations asks PyPI for a newer version on import (a thread and an HTTP request):
# Kensa runs offline and pins its versions, so the question is never asked.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

#: public name -> the submodule that defines it
_HOME = {
    **dict.fromkeys(("AugmentedSample", "augment_images", "augmented_copies"), "preview"),
    **dict.fromkeys(("TRANSFORMS", "AugmentConfig", "AugmentConfigError", "ParamSpec",
                     "TransformSpec", "TransformStep", "build_pipeline", "default_step",
                     "deserialize", "seed_pipeline", "serialize", "validate_config"), "schema"),
    **dict.fromkeys(("SYNTHETIC_KINDS", "SyntheticDefect", "cutpaste", "cutpaste_scar",
                     "inject", "perlin_defect", "seamless_patch"), "synthetic"),
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
