"""Export a project's Kensa model as ONNX or OpenVINO, checked against the app on held-out images.

What is exported is the model version's ACTIVE state (its current bank; a bank update or a
rollback changes what an export holds) at one fixed working size: the size
``FewShotPatchCore.working_tensor`` gives the project's held-out images (the most common one
when they differ; images of other sizes cannot be fed to a fixed-size file unchanged and are
counted in ``n_other_size``).

Before anything is kept, the written file itself is scored through OpenVINO's CPU runtime on
those images and compared with the app's own scoring (``model.score``) on normalized scores,
normalized by the decision rule in force (``ThresholdInfo.normalized``: 0.5 at the threshold).
A difference above ``engine.export.parity.TOLERANCE`` refuses the export, naming the image.

Files go to ``<model folder>/export/<format>[-fp16]/``: built in a hidden sibling folder and
renamed into place only after the check passed, so a refused, failed or cancelled export
leaves the previous one (if any) untouched and nothing half-written. ``export.json`` beside
the files says how to feed and read the model (input size, threshold, normalization).

Every model that declares ``Capability.EXPORT`` is exported the same way: Kensa's own model
through :class:`engine.export.core.InferenceCore` (the bank as a buffer), the anomalib zoo
through its ``export_core`` (anomalib's pre-processing normalisation and torch model, the graph
anomalib's own ``to_onnx`` traces, without its post-processor: Kensa's threshold and
normalization stay in ``export.json``). Same tracer, same folder layout, same parity check.
Stock anomalib PatchCore declares no export (its scores go through a coreset kNN whose tracing
was not verified) and is refused in words.
"""

from __future__ import annotations

import io
import shutil
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import db.repositories as repo
from db.models import ModelVersion, Project, RunStatus
from engine.artifacts import write_json_atomic
from engine.data import ImageLoadError, load_image
from engine.models import Capability, registry
from services.context import Kensa
from services.data.projects import active_model_version, require_project
from services.inference.batches import (
    ActiveModel,
    active_state_of,
    load_model,
    validation_batch_name,
)
from services.wording import model_name, model_numbers

KIND = "export"
#: the model whose files are built from Kensa's own inference core
KENSA = "kensa_patchcore"
FORMAT_TITLES = {"openvino": "OpenVINO", "onnx": "ONNX"}
MANIFEST = "export.json"
#: validation images the parity check scores at most (a deterministic spread beyond)
MAX_IMAGES = 200

ProgressFn = Callable[[str, float], None]


class ExportRefused(ValueError):
    """The export cannot be made or did not match the app (the message says which and why)."""


def _exportable(algorithm: str) -> bool:
    try:
        return Capability.EXPORT in registry.spec(algorithm).capabilities
    except ValueError:  # a model no longer registered
        return False


def _core_and_rule(model: Any, algorithm: str, height: int, width: int) -> tuple[Any, str]:
    """The module to trace and, in words, how a deployment must size its input."""
    if algorithm == KENSA:
        from engine.export.core import InferenceCore

        return InferenceCore.from_model(model, height, width), _resize_rule(model, height, width)
    return model.export_core(height, width), model.resize_rule(height, width)


def _resize_rule(model: Any, height: int, width: int) -> str:
    """How a deployment must size an image for this file, in words (export.json)."""
    factor = model.state.scale_factor
    rule = (f"every image scaled by {factor:.6g} (the model's shared scale)" if factor
            else f"long side to {model.config.image_size}")
    return (f"aspect-preserving, {rule}, sides rounded to multiples of 8 "
            f"(FewShotPatchCore.working_tensor); this file takes {height}x{width} only")


def folder_name(fmt: str, fp16: bool) -> str:
    """``onnx``, ``openvino`` or ``openvino-fp16``: the sub-folder under ``export/``."""
    return fmt + ("-fp16" if fp16 else "")


def _check_request(fmt: str, fp16: bool) -> None:
    if fmt not in FORMAT_TITLES:
        raise ExportRefused(f"unknown export format {fmt!r}; choose openvino or onnx")
    if fp16 and fmt != "openvino":
        raise ExportRefused("FP16 is offered for OpenVINO only; ONNX files are FP32")


def _model_version(session: Any, project: Project, model_number: int | None = None,
                   model_version_id: int | None = None) -> ModelVersion:
    """The finished model chosen by number (as pages show it), by id, or the one in use."""
    if model_number is not None:
        ids = {n: i for i, n in model_numbers(session, project.id).items()}
        if model_number not in ids:
            raise ExportRefused(f"project {project.name!r} has no {model_name(model_number)}")
        model_version_id = ids[model_number]
    if model_version_id is None:
        mv = active_model_version(session, project.id)
        if mv is None:
            raise ExportRefused(f"project {project.name!r} has no trained model yet; train "
                                "one first")
        return mv
    mv = repo.get_model_version(session, int(model_version_id))
    if mv is None or mv.project_id != project.id or mv.status != RunStatus.DONE.value:
        number = model_numbers(session, project.id).get(int(model_version_id))
        raise ExportRefused(f"{model_name(number)} of {project.name!r} is not a finished "
                            "training")
    return mv


def _active(ctx: Kensa, session: Any, mv: ModelVersion, label: str) -> ActiveModel:
    active = active_state_of(ctx, session, mv)
    if active is None:
        raise ExportRefused(f"{label} has no active bank and threshold to export")
    return active


def _resolve(session: Any, project_name: str, model_number: int | None,
             model_version_id: int | None) -> tuple[Project, ModelVersion, str]:
    """Project, model version and its page label; a model other than Kensa's is refused."""
    proj = require_project(session, project_name)
    mv = _model_version(session, proj, model_number, model_version_id)
    label = model_name(model_numbers(session, proj.id).get(mv.id))
    if not _exportable(mv.algorithm):
        raise ExportRefused(f"{label} is {mv.algorithm}, which cannot be exported; Kensa "
                            "PatchCore and the offline anomalib models can")
    return proj, mv, label


def _validation_paths(ctx: Kensa, session: Any, project: Project, mv: ModelVersion
                      ) -> list[Path]:
    """The project images of the model's validation batch (held out from its training)."""
    batch = repo.get_batch_by_name(session, project.id, validation_batch_name(mv.id))
    if batch is None:
        return []
    images = {img.sha256: img for img in repo.list_images(session, project.id)}
    shas = {p.image_sha256 for p in repo.list_predictions(session, batch.id)}
    return sorted(ctx.resolve(images[s].path) for s in shas if s in images)


def export_request(ctx: Kensa, project_name: str, fmt: str, fp16: bool = False,
                   model_number: int | None = None, model_version_id: int | None = None
                   ) -> dict[str, Any]:
    """The job payload: request checked and the model version resolved now (a training that
    finishes while the job waits does not change what is exported)."""
    _check_request(fmt, fp16)
    with ctx.session(readonly=True) as s:
        proj, mv, _ = _resolve(s, project_name, model_number, model_version_id)
        return {"name": proj.name, "project_id": proj.id, "model_version_id": mv.id,
                "format": fmt, "fp16": bool(fp16)}


def request_export(ctx: Kensa, project_name: str, fmt: str, fp16: bool = False,
                   model_version_id: int | None = None) -> int:
    """Queue an export job (the Training page); returns its id. Refusals come at once."""
    from services.jobs.api import submit

    payload = export_request(ctx, project_name, fmt, fp16, model_version_id=model_version_id)
    return submit(ctx, KIND, payload, project_id=payload["project_id"])


def export_model(ctx: Kensa, project_name: str, fmt: str, fp16: bool = False,
                 model_number: int | None = None, *, model_version_id: int | None = None,
                 progress: ProgressFn | None = None) -> dict[str, Any]:
    """Export, check parity on the held-out images, keep the files only if they match.

    Returns ``files`` (name -> sha256), ``folder`` (as stored: relative to ``KENSA_HOME``),
    ``parity_max_abs_diff``, ``n_images``, ``format``, ``fp16`` and what the manifest holds.
    Raises :class:`ExportRefused` (a ``ValueError``) with the reason in words.
    """
    import torch

    from engine.export.formats import CPU_CONFIG, ExportedRunner, export_core
    from engine.export.parity import ParityError, compare, require_parity

    report = progress or (lambda stage, fraction: None)
    _check_request(fmt, fp16)
    with ctx.session(readonly=True) as s:
        proj, mv, label = _resolve(s, project_name, model_number, model_version_id)
        active = _active(ctx, s, mv, label)
        paths = _validation_paths(ctx, s, proj, mv)
    if not paths:
        raise ExportRefused(f"{label} has no held-out images to check an export on; add a few "
                            "test images and train again")
    if len(paths) > MAX_IMAGES:
        step = len(paths) / MAX_IMAGES
        paths = [paths[int(i * step)] for i in range(MAX_IMAGES)]

    report("loading the model", 0.02)
    model = load_model(active, device="cpu").model
    images, tensors, names = [], [], []
    for i, path in enumerate(paths):
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            raise ExportRefused(f"validation image {path}: {exc}") from None
        images.append(image)
        tensors.append(model.working_tensor(image))
        names.append(path.name)
        report("reading the validation images", 0.02 + 0.13 * (i + 1) / len(paths))
    sizes = Counter(tuple(t.shape[-2:]) for t in tensors)
    (height, width), _ = sizes.most_common(1)[0]
    keep = [i for i, t in enumerate(tensors) if tuple(t.shape[-2:]) == (height, width)]

    report("scoring with the app", 0.2)
    app_scores = model.score([images[i] for i in keep]).scores
    report("writing the files", 0.35)
    core, resize_rule = _core_and_rule(model, mv.algorithm, height, width)
    exports = active.model_dir / "export"
    final = exports / folder_name(fmt, fp16)
    building = exports / f".{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        exported = export_core(core, building, fmt, fp16)
        report("checking the export on the validation images", 0.6)
        runner = ExportedRunner(exported.path)
        exported_scores = []
        for n, i in enumerate(keep):
            exported_scores.append(float(runner.score(tensors[i])[0][0]))
            report("checking the export on the validation images", 0.6 + 0.35 * (n + 1)
                   / len(keep))
        what = f"the {FORMAT_TITLES[fmt]}{' FP16' if fp16 else ''} export of {label}"
        parity = compare([names[i] for i in keep], app_scores, exported_scores,
                         active.rule.normalized)
        try:
            require_parity(parity, what)
        except ParityError as exc:
            raise ExportRefused(str(exc)) from None
        manifest = {
            "model": mv.algorithm, "project": proj.name, "model_version_id": mv.id,
            "model_label": label, "bank_version": active.bank_version,
            "state_digest": active.state_digest, "format": fmt, "fp16": bool(fp16),
            "main_file": exported.main, "files": exported.files,
            "input": {"name": "images", "shape": list(exported.input_shape),
                      "dtype": "float32", "range": [0.0, 1.0], "layout": "NCHW RGB",
                      "resize": resize_rule},
            "outputs": {"scores": "raw image score [B]",
                        "maps": f"raw anomaly map [B,1,{height},{width}]"},
            "threshold": active.rule.value, "threshold_method": active.rule.method,
            "normal_scores": list(active.rule.normal_scores),
            "normalization": "0.5 * (score - median(normal_scores)) / (threshold - median), "
                             "clipped to [0, 1] (engine.thresholds.normalize)",
            "openvino_cpu_config": CPU_CONFIG,
            "parity_max_abs_diff": parity.max_abs_diff, "parity_tolerance": parity.tolerance,
            "parity_worst_image": parity.names[parity.worst],
            "n_images": len(keep), "n_other_size": len(paths) - len(keep),
            "torch": torch.__version__,
        }
        write_json_atomic(building / MANIFEST, manifest)
        _swap_in(building, final)
    finally:
        shutil.rmtree(building, ignore_errors=True)  # refused, failed or cancelled
    report("done", 1.0)
    files = {**exported.files, MANIFEST: _sha256(final / MANIFEST)}
    return {**manifest, "files": files, "folder": ctx.stored(final),
            "project": proj.name, "message": parity.message(what)}


def _swap_in(building: Path, final: Path) -> None:
    """Replace ``final`` by ``building`` with renames only: a reader sees the old set or the
    new one (between the two renames, briefly none), never a mix."""
    old = final.with_name(f".{final.name}-old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        final.rename(old)
    try:
        building.rename(final)
    except BaseException:
        if old.exists() and not final.exists():
            old.rename(final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_archive(ctx: Kensa, result: dict[str, Any]) -> tuple[str, bytes]:
    """(file name, zip bytes) of a finished export (a job's result): every file it names,
    each checked against its sha256, so the download is exactly what parity checked.

    Stored, not deflated: weights and bank barely compress, and the page builds this on
    every rerun that shows the download."""
    folder = ctx.resolve(result["folder"])
    if folder is None or not folder.is_dir():
        raise ExportRefused(f"the export folder {result['folder']} is gone; export again")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, digest in sorted(result["files"].items()):
            path = folder / name
            if not path.is_file() or _sha256(path) != digest:
                raise ExportRefused(f"{path} is missing or changed since the export; export "
                                    "again")
            archive.write(path, name)
    label = str(result.get("model_label", "model")).lower().replace(" ", "-")
    title = f"{result['project']}-{label}-{folder.name}".replace(" ", "_")
    return f"{title}.zip", buffer.getvalue()


def export_target(ctx: Kensa, project: str) -> dict[str, Any] | None:
    """The newest finished model (what the Training page offers to export), or None."""
    with ctx.session(readonly=True) as s:
        proj = require_project(s, project)
        mv = active_model_version(s, proj.id)
        if mv is None:
            return None
        return {"model_version_id": mv.id, "algorithm": mv.algorithm,
                "label": model_name(model_numbers(s, proj.id).get(mv.id)),
                "exportable": _exportable(mv.algorithm)}


def export_job(ctx: Kensa, project: str, model_version_id: int) -> dict[str, Any] | None:
    """The newest export job of the model version, whatever its status (page progress)."""
    from services.jobs.api import list_jobs

    for job in list_jobs(ctx, project, kinds=[KIND], limit=20):
        if (job["payload"] or {}).get("model_version_id") == model_version_id:
            return job
    return None
