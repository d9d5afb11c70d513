"""The one contract every detector in Kensa offers, so services never care which model runs.

A model is fitted on good images only and scores any image: one scalar per image (higher is more
anomalous) and one anomaly map per image at the image's own size. What else it can do (grow a
memory bank, show nearest normal patches, export) it DECLARES in ``capabilities``; services ask
that set instead of importing a model class, so a new detector needs no service change.

A fitted model's state is a folder of files written atomically; ``save`` returns
``{file name: sha256}`` and ``load`` verifies every named file before using it, ``model.json``
included, so an edited description can no longer silently change scores.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol, Self

import numpy as np

#: ``progress(stage, fraction)``: stage is a short human label, fraction in [0, 1].
ProgressFn = Callable[[str, float], None]

#: The file that says which model a state folder holds and how to rebuild it.
MODEL_FILE = "model.json"


class Capability(StrEnum):
    """What a model can do beyond fit / score / save / load."""

    #: state is a memory bank of patch vectors; the model exposes ``vector_count`` and ``dim``
    MEMORY_BANK = "memory_bank"
    #: ``update(images, sources, first_id)`` grows the state with new good images
    INCREMENTAL_UPDATE = "incremental_update"
    #: bank vectors carry provenance (``bank.provenance`` ids -> ``records``)
    NEAREST_PATCHES = "nearest_patches"
    #: can be written to a deployable format (OpenVINO, ONNX)
    EXPORT = "export"


class ScoreResult(NamedTuple):
    """Scores of a batch: ``scores[i]`` and ``maps[i]`` (H_i x W_i float32) belong to image i."""

    scores: np.ndarray
    maps: list[np.ndarray]


class PatchEvidence(NamedTuple):
    """One image scored with the evidence behind it (models with ``NEAREST_PATCHES``).

    ``score`` and ``score_map`` equal what ``score`` gives for the image; ``distances``,
    ``bank_rows`` and ``provenance`` hold the k nearest bank vectors of every feature-grid cell
    (``[gh, gw, k]``, ``[gh, gw, k]``, ``[gh, gw, k, 3]`` = record id, row, col), ascending in
    distance, so an explanation costs one backbone pass, not a second scoring.
    """

    score: float
    score_map: np.ndarray
    distances: np.ndarray
    bank_rows: np.ndarray
    provenance: np.ndarray
    work_size: tuple[int, int]


class FitReport(NamedTuple):
    """What a fit produced, for logs and the database."""

    n_images: int
    n_patches: int
    bank_size: int
    fit_seconds: float


class ImageSource(NamedTuple):
    """Where a training image came from; the caller knows, the engine only sees arrays.

    ``augmented``: an augmented copy of a shot (written to ``path`` so provenance crops it).
    Rules that depend on how many different parts were photographed (the few-shot model's
    flip/rotation views) count only the shots; models without such rules ignore the flag.
    """

    path: str
    sha256: str
    augmented: bool = False


@dataclass(frozen=True)
class ProvenanceRecord:
    """One (training image, view) whose patches may sit in the bank under id ``id``.

    ``view`` names the flip/rotation (``rot0``, ``rot90+flip``, ...); bank rows keep their
    (row, col) in the ORIGINAL image's grid of ``grid_height`` x ``grid_width`` cells, so the
    crop of a nearest patch is ``path`` at that cell whatever the view. A record exists even
    when none of its vectors survived the coreset: ids are issued, never reused.
    """

    id: int
    path: str
    sha256: str
    view: str
    height: int
    width: int
    grid_height: int
    grid_width: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelStateError(ValueError):
    """A saved state cannot be used: a file is missing, unreadable, altered or malformed."""


class StateIntegrityError(ModelStateError):
    """A state file's sha256 differs from the one recorded when it was saved."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_verified(directory: Path, name: str, files: Mapping[str, str] | None) -> bytes:
    """The bytes of ``directory/name``, checked against ``files[name]`` when it is listed.

    Reading once and hashing those bytes leaves no window between check and use.
    """
    path = Path(directory) / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelStateError(f"model state file {path} is missing") from None
    except OSError as exc:
        raise ModelStateError(f"cannot read model state file {path}: {exc}") from exc
    expected = (files or {}).get(name)
    if expected is not None:
        actual = sha256_bytes(data)
        if actual != expected.strip().lower():
            raise StateIntegrityError(
                f"model state file {path} failed its integrity check: expected sha256 "
                f"{expected}, actual {actual}"
            )
    return data


def verify_files(directory: Path, files: Mapping[str, str]) -> None:
    """Check every file of a manifest (e.g. before a rollback points at them again)."""
    for name in files:
        read_verified(directory, name, files)


def read_model_json(directory: Path, files: Mapping[str, str] | None, model: str
                    ) -> dict[str, Any]:
    """``model.json`` of a state, verified, parsed, and checked to belong to ``model``."""
    data = read_verified(directory, MODEL_FILE, files)
    path = Path(directory) / MODEL_FILE
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise ModelStateError(f"cannot read model description {path}: {exc}") from exc
    if not isinstance(payload, dict):
        raise ModelStateError(f"model description {path} is not a JSON object")
    found = payload.get("model")
    if found != model:
        raise ModelStateError(f"{path} holds a {found!r} state, not {model!r}")
    return payload


def read_tensor_file(directory: Path, payload: Mapping[str, Any], file_key: str,
                     files: Mapping[str, str] | None) -> dict[str, Any]:
    """The safetensors file ``model.json`` names under ``file_key``, verified against the
    manifest (else the sha256 ``model.json`` records as ``<stem>_sha256``), as tensors.

    ``file_key`` is e.g. ``"bank_file"``; its sha256 key is ``"bank_sha256"``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    name = str(require(payload, file_key, directory))
    expected = (files or {}).get(name) or payload.get(file_key.removesuffix("_file") + "_sha256")
    data = read_verified(directory, name, {name: expected} if expected else None)
    try:
        return load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelStateError(f"{Path(directory) / name} is not a safetensors file: {exc}"
                              ) from None


def require(payload: Mapping[str, Any], key: str, directory: Path) -> Any:
    """``payload[key]`` or a one-line error naming the file and the key."""
    try:
        return payload[key]
    except KeyError:
        raise ModelStateError(
            f"model description {Path(directory) / MODEL_FILE} lacks the key {key!r}"
        ) from None


class AnomalyModel(Protocol):
    """``fit`` on good RGB uint8 images (H x W x 3), then ``score`` any images.

    ``sources`` (one per image) and ``first_id`` let models with
    :attr:`Capability.NEAREST_PATCHES` number their provenance records; others ignore them.
    """

    name: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]]

    @classmethod
    def from_params(cls, params: Mapping[str, Any], device: str | None = None) -> Self:
        """A fresh, unfitted model from plain parameters (the registry's ``create``)."""
        ...

    def fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None = None,
            sources: Sequence[ImageSource] | None = None, first_id: int = 0) -> FitReport:
        ...

    def score(self, images: Sequence[np.ndarray]) -> ScoreResult:
        ...

    def save(self, directory: Path) -> dict[str, str]:
        """Write the model's state atomically; returns ``{file name: sha256}``."""
        ...

    @classmethod
    def load(cls, directory: Path, files: Mapping[str, str] | None = None,
             device: str | None = None) -> Self:
        """Rebuild a fitted model; every file named in ``files`` is verified first."""
        ...
