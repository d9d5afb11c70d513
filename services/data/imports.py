"""Bring image data into Kensa safely: a zip upload or a folder on the server.

Uploaded archives are untrusted. A zip can name ``../../etc/cron.d/x`` or ``/home/u/.ssh/…``,
carry symlinks that later writes would follow, or expand 1 KB into gigabytes. Every entry is
checked *before* anything is written, bad entries are listed with a plain reason, and the rest
is imported, so one stray file never blocks a whole data set. Folders on the server go through
the same checks and are copied, so the project keeps a stable copy that nobody edits in place.

Files land in ``$KENSA_HOME/imports/<project>/`` with the data set's own layout at the top:
``mydata/train/good/a.png`` in a zip becomes ``imports/<project>/train/good/a.png``, so a
second zip of the same line adds to the same project. A file already there with the same content is
left alone, one with different content is refused (rows and banks refer to images by sha256,
so an image must never change under a trained model).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from engine.data import (
    IMAGE_SUFFIXES,
    DatasetError,
    ImageLoadError,
    discover,
    sha256_file,
    verify_image,
)
from services.context import Kensa
from services.data.names import NameRefused, clean_name
from services.data.projects import create_project, get_project, list_projects

#: Names whose presence says "dataset root" (MVTec or flat layout, see engine.data).
_LAYOUT_MARKERS = ("train", "test", "good", "defect")
#: Operating-system clutter: skipped and listed, never imported.
_SYSTEM_NAMES = ("__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini")
_CHUNK = 1 << 20
#: ``progress(stage, fraction)``: called per file, so a job can show it and stop between files.
ProgressFn = Callable[[str, float], None]

# Magic numbers of the formats engine.data decodes: a renamed .exe is not an image.
_MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"II+\x00",
    b"MM\x00+",
)


log = logging.getLogger(__name__)

#: Environment variable for the per-import quota of uncompressed bytes, in GB (default 4).
IMPORT_QUOTA_ENV = "KENSA_IMPORT_MAX_GB"
#: Longest file or folder name most file systems accept (ext4, NTFS, APFS), in bytes.
_MAX_NAME_BYTES = 255
#: Longest relative path accepted inside an import; real data sets stay far below.
_MAX_PATH_BYTES = 1024
#: Slack for metadata (EXIF, ICC profiles, thumbnails) when comparing a file with its pixels.
_METADATA_SLACK = 4 * 1024**2


class ImportRefused(ValueError):
    """The whole source is refused (too big, not a zip, not a folder); the message says why."""


def _quota_bytes() -> int:
    """``KENSA_IMPORT_MAX_GB`` in bytes, default 4 GB; a bad value is refused, not ignored."""
    raw = os.environ.get(IMPORT_QUOTA_ENV, "").strip()
    if not raw:
        return 4 * 1024**3
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ValueError(f"{IMPORT_QUOTA_ENV}={raw!r} is not a positive number of gigabytes")
    return int(value * 1024**3)


@dataclass(frozen=True)
class ImportLimits:
    """Bomb guards. Defaults fit camera datasets: thousands of images, tens of MB each at most.

    ``max_total_bytes`` is the per-import quota of uncompressed bytes (a zip is refused whole
    when it announces more); its default comes from ``KENSA_IMPORT_MAX_GB`` when the limits are
    made. ``max_ratio`` bounds one entry's uncompressed/compressed size: JPEG/PNG barely
    compress (ratio ~1), BMP/TIFF reach 5-20; a ratio of 100 is a bomb, not a photo. Pixels are
    bounded separately, per image, by ``KENSA_MAX_MEGAPIXELS`` (engine.image_limits).
    """

    max_total_bytes: int = field(default_factory=_quota_bytes)
    max_file_bytes: int = 512 * 1024**2
    max_entries: int = 50_000
    max_ratio: float = 100.0


@dataclass(frozen=True)
class Rejected:
    """One entry that was not imported and why, in words a quality engineer can act on."""

    name: str
    reason: str


@dataclass
class ImportReport:
    """What an import did: where the data is, what came in, what was refused."""

    destination: Path
    dataset_root: Path | None = None
    imported: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.dataset_root is not None and bool(self.imported or self.unchanged)


# --------------------------------------------------------------------------- names


def project_slug(name: str) -> str:
    """A folder name for a project: letters, digits, ``-_.`` only, never empty or hidden."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.")
    return slug[:80] or "project"


def import_dir(home: Path, project: str) -> Path:
    """``$KENSA_HOME/imports/<project>/``: where a project's imported files live."""
    return Path(home) / "imports" / project_slug(project)


def _is_system(parts: tuple[str, ...]) -> bool:
    return any(p in _SYSTEM_NAMES or p.startswith("._") for p in parts)


def safe_relative(name: str) -> PurePosixPath | str:
    """The entry's relative path, or the reason it is unsafe (traversal, absolute, odd bytes).

    Backslashes count as separators (zips made on Windows); a drive letter or a leading
    slash is an absolute path; any ``..`` component is traversal, even if it would resolve
    back inside the folder: a well-meaning tool never writes one.
    """
    text = name.replace("\\", "/")
    if "\x00" in text or any(ord(c) < 32 for c in text):
        return "name contains control characters"
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        return "absolute path (must be relative to the archive)"
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return "path leaves the import folder ('..')"
    if not parts:
        return "empty name"
    # Over-long names fail deep inside the file system with an OSError; refuse them up front.
    longest = max(len(p.encode("utf-8", "surrogateescape")) for p in parts)
    if longest > _MAX_NAME_BYTES:
        return (f"a file or folder name in this path is {longest} bytes long; file systems "
                f"accept at most {_MAX_NAME_BYTES}: rename it")
    total = len("/".join(parts).encode("utf-8", "surrogateescape"))
    if total > _MAX_PATH_BYTES:
        return f"the path is {total} bytes long; the limit is {_MAX_PATH_BYTES}: shorten it"
    return PurePosixPath(*parts)


def _looks_like_image(head: bytes) -> bool:
    return head.startswith(_MAGIC)


def _suffix_ok(rel: PurePosixPath) -> bool:
    return rel.suffix.lower() in IMAGE_SUFFIXES


def _not_image_reason(rel: PurePosixPath) -> str:
    return f"not an image file (accepted: {', '.join(IMAGE_SUFFIXES)})"


# --------------------------------------------------------------------------- writing


def _existing_ancestor(folder: Path) -> Path:
    """The nearest folder at or above ``folder`` that exists (where a temp file can go)."""
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder


def _make_dirs(folder: Path) -> list[Path]:
    """Create ``folder`` and missing parents; return the ones created, outermost first."""
    missing: list[Path] = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    missing.reverse()
    made: list[Path] = []
    try:
        for d in missing:
            d.mkdir()
            made.append(d)
    except BaseException:
        _remove_empty(made)
        raise
    return made


def _remove_empty(made: list[Path]) -> None:
    """Remove folders this import created, innermost first, as long as they are empty."""
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError:
            break


def _place(tmp: Path, target: Path, digest: str, rel: str, report: ImportReport) -> None:
    """Move a fully written temp file into place, unless the name is taken by other bytes.

    Folders are created only here, once the file is known to be a good image, and removed
    again if the move fails, so a refused or failed entry leaves neither a temp file nor an
    empty folder behind; an ``OSError`` becomes a rejection instead of aborting the import.
    """
    made: list[Path] = []
    try:
        if target.is_symlink():
            tmp.unlink()
            report.rejected.append(
                Rejected(rel, "a link already has this name in the import folder")
            )
        elif target.exists():
            tmp.unlink()
            if target.is_file() and sha256_file(target) == digest:
                report.unchanged.append(rel)
            else:
                report.rejected.append(
                    Rejected(rel, "a different file with this name was imported before; rename it")
                )
        else:
            made = _make_dirs(target.parent)
            os.replace(tmp, target)
            report.imported.append(rel)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        _remove_empty(made)
        report.rejected.append(Rejected(rel, f"cannot be written ({exc.strerror or exc})"))
    except BaseException:
        tmp.unlink(missing_ok=True)
        _remove_empty(made)
        raise


def _verify_reason(tmp: Path, size: int) -> str | None:
    """Why the copied file must not be kept (does not decode, hides extra data), else None.

    A file that merely starts with a PNG signature is not an image: the whole file is decoded
    (after the header's pixel limit, see engine.image_limits). A PNG, JPEG or BMP far bigger
    than its pixels (4x their raw size plus 4 MB for metadata) carries something else after
    the image, such as a 481 MB blob behind a valid header. TIFF is exempt: a multi-page TIFF
    is legitimately bigger than the first page, the only one Kensa reads.
    """
    try:
        header, pixel_bytes = verify_image(tmp)
    except ImageLoadError as exc:
        return exc.reason
    if header.format != "TIFF" and size > 4 * pixel_bytes + _METADATA_SLACK:
        return (
            f"the file is {size / 1024**2:.1f} MB but its {header.width}x{header.height} pixels "
            f"take only {pixel_bytes / 1024**2:.1f} MB: the rest is not image data"
        )
    return None


def _copy_stream(src: BinaryIO, target: Path, limit: int) -> tuple[Path, str, int] | str:
    """Copy at most ``limit`` bytes into a temp file and check that it is a usable image.

    Returns (temp path, sha256, size), or a reason when the data is not an image, is bigger
    than announced (a zip header can lie about sizes; the stream cannot), or does not decode
    (:func:`_verify_reason`). The temp file goes into the nearest existing folder above
    ``target`` (same file system, so :func:`_place` can rename it) and is removed on every
    failure; no folder is created here.
    """
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=".import-", dir=_existing_ancestor(target.parent))
    tmp = Path(tmp_name)
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            head = src.read(16)
            if not head:
                tmp.unlink()
                return "file is empty (0 bytes)"
            if not _looks_like_image(head):
                tmp.unlink()
                return "content is not a PNG, JPEG, BMP or TIFF image"
            chunk = head
            while chunk:
                written += len(chunk)
                if written > limit:
                    tmp.unlink()
                    return "larger than announced or than the size limit (decompression bomb?)"
                digest.update(chunk)
                out.write(chunk)
                chunk = src.read(_CHUNK)
        reason = _verify_reason(tmp, written)
        if reason is not None:
            tmp.unlink()
            return reason
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, digest.hexdigest(), written


# --------------------------------------------------------------------------- zip


def _zip_file_type(info: zipfile.ZipInfo) -> int:
    """The Unix file-type bits of an entry (0 when the archiver did not record any)."""
    return stat.S_IFMT((info.external_attr >> 16) & 0xFFFF)


def _zip_check(info: zipfile.ZipInfo, limits: ImportLimits) -> PurePosixPath | str | None:
    """The entry's safe relative path, a rejection reason, or None for a folder entry."""
    rel = safe_relative(info.filename)
    if isinstance(rel, str):
        return rel
    if info.is_dir():
        return None
    if _is_system(rel.parts):
        return "operating-system file, skipped"
    kind = _zip_file_type(info)
    if kind == stat.S_IFLNK:
        return "symbolic link (not allowed)"
    if kind not in (0, stat.S_IFREG):
        return "not a regular file"
    if not _suffix_ok(rel):
        return _not_image_reason(rel)
    if info.flag_bits & 0x1:
        return "encrypted entry (no password)"
    if info.file_size > limits.max_file_bytes:
        return (f"{info.file_size / 1024**2:.0f} MB is above the "
                f"{limits.max_file_bytes / 1024**2:.0f} MB limit per image")
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > 1024**2 and ratio > limits.max_ratio:
        return f"compressed {ratio:.0f}:1 (limit {limits.max_ratio:.0f}:1): decompression bomb?"
    return rel


def import_zip(
    source: str | os.PathLike[str] | BinaryIO,
    destination: Path,
    limits: ImportLimits = ImportLimits(),
    progress: ProgressFn | None = None,
    report: ImportReport | None = None,
) -> ImportReport:
    """Extract the safe image entries of a zip into ``destination``; list the rest.

    ``report`` (optional) is filled as the files land, so a caller that meets an exception
    still knows which files this import wrote (and can remove them again).

    Refuses the whole archive (``ImportRefused``, nothing written) when it is not a zip, has
    too many entries, announces more than ``max_total_bytes`` or holds no data set layout;
    otherwise every entry is judged on its own.
    """
    destination = Path(destination)
    report = report if report is not None else ImportReport(destination)
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ImportRefused(f"this file is not a readable zip archive ({exc})") from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_entries:
            raise ImportRefused(
                f"the archive has {len(infos)} entries; the limit is {limits.max_entries}"
            )
        announced = sum(i.file_size for i in infos)
        if announced > limits.max_total_bytes:
            raise ImportRefused(
                f"the archive would unpack to {announced / 1024**3:.2f} GB; the limit is "
                f"{limits.max_total_bytes / 1024**3:.2f} GB (decompression bomb?)"
            )
        accepted: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        for info in infos:
            verdict = _zip_check(info, limits)
            if isinstance(verdict, str):
                report.rejected.append(Rejected(info.filename, verdict))
            elif verdict is not None:
                accepted.append((info, verdict))
        prefix = layout_prefix(rel for _, rel in accepted)
        budget = limits.max_total_bytes
        for done, (info, rel) in enumerate(accepted):
            if progress:
                progress("unpacking the zip", done / len(accepted))
            inner = _under(rel, prefix)
            if inner is None:
                report.rejected.append(
                    Rejected(info.filename, f"outside the data set folder '{prefix}/'")
                )
                continue
            target = destination.joinpath(*inner.parts)
            if not _inside(target, destination):
                report.rejected.append(Rejected(info.filename, "path leaves the import folder"))
                continue
            try:
                with archive.open(info) as src:
                    result = _copy_stream(src, target, min(info.file_size, budget))
            except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as exc:
                report.rejected.append(Rejected(info.filename, f"damaged entry ({exc})"))
                continue
            if isinstance(result, str):
                report.rejected.append(Rejected(info.filename, result))
                continue
            tmp, digest, size = result
            budget -= size
            _place(tmp, target, digest, str(inner), report)
    report.dataset_root = find_dataset_root(destination)
    return report


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` stays under ``root`` once links in existing parents are resolved."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- import roots

#: Environment variable: the server folders a browser may import from (``os.pathsep``-separated).
IMPORT_ROOTS_ENV = "KENSA_IMPORT_ROOTS"
#: Folders of the operating system: never an import root, nor anything inside them.
_SYSTEM_FOLDERS = (
    "/etc", "/proc", "/sys", "/dev", "/boot", "/root", "/var", "/usr", "/bin", "/sbin",
    "/lib", "/lib32", "/lib64", "/libx32", "/run", "/snap",
)


def _system_folder(folder: Path) -> str | None:
    """The system folder ``folder`` is (or lies in), else None; ``/root`` counts unless it is
    the home folder of the account running Kensa (a server run as root)."""
    if folder == Path(folder.anchor):
        return folder.anchor
    home = Path.home().resolve()
    for system in _SYSTEM_FOLDERS:
        base = Path(system)
        if base == Path("/root") and (folder == home or home in folder.parents):
            continue
        if folder == base or base in folder.parents:
            return system
    return None


def import_roots(ctx: Kensa) -> list[Path]:
    """The folders a page may import from, resolved; ``$KENSA_HOME/inbox`` is created.

    ``KENSA_IMPORT_ROOTS`` lists them; by default they are the home folder of the account
    running the server and ``$KENSA_HOME/inbox``. A browser user types any path into the
    folder form, and the server reads it with its own rights: without roots, ``/etc`` or the
    administrator's SSH keys were one click away. System folders are dropped even when listed
    (with a warning in the log), so a typo such as ``/`` cannot open the whole machine.
    """
    raw = os.environ.get(IMPORT_ROOTS_ENV, "").strip()
    if raw:
        listed = [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]
    else:
        inbox = ctx.home / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        listed = [Path.home(), inbox]
    roots: list[Path] = []
    for folder in listed:
        resolved = folder.resolve()
        system = _system_folder(resolved)
        if system is not None:
            log.warning("%s=%s: %s is a system folder (%s) and is not an import folder",
                        IMPORT_ROOTS_ENV, raw or "(default)", folder, system)
        elif resolved not in roots:
            roots.append(resolved)
    return roots


def allowed_folder(ctx: Kensa, folder: str | os.PathLike[str]) -> Path:
    """``folder`` resolved, when it is an existing folder under an import root.

    Links are resolved first, so a link inside a root that points at ``/etc`` is outside.
    A missing folder and one outside the roots get the same message, so the form cannot be
    used to probe which folders exist on the server. The CLI does not call this: it runs as
    the operator, with the operator's own rights.
    """
    if not str(folder).strip():
        raise ImportRefused("type the path of a folder on this server")
    roots = import_roots(ctx)
    target = Path(folder).expanduser().resolve()
    inside = any(target == root or root in target.parents for root in roots)
    if not inside or _system_folder(target) is not None or not target.is_dir():
        where = ", ".join(str(r) for r in roots) or f"none: set {IMPORT_ROOTS_ENV}"
        raise ImportRefused(f"no such folder under the import folders ({where}): {folder}")
    return target


# --------------------------------------------------------------------------- folder


def _walk(root: Path) -> Iterable[Path]:
    """Every entry below ``root`` without following links (a link is reported, not entered)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        dirnames.sort()
        for name in list(dirnames):
            if (base / name).is_symlink():
                dirnames.remove(name)
                yield base / name
        for name in sorted(filenames):
            yield base / name


def import_folder(
    source: str | os.PathLike[str],
    destination: Path,
    limits: ImportLimits = ImportLimits(),
    progress: ProgressFn | None = None,
    report: ImportReport | None = None,
) -> ImportReport:
    """Copy the image files of a server folder into ``destination``, with the zip's checks.

    No import-root check here (the demo and the tests copy from anywhere): the pages' and
    jobs' entry point :func:`import_data` checks ``source`` with :func:`allowed_folder`.
    ``report`` as in :func:`import_zip`.
    """
    if not str(source).strip():
        raise ImportRefused("type the path of a folder on this server")
    src_root = Path(source).expanduser()
    if not src_root.is_dir():
        raise ImportRefused(f"{src_root}: no such folder on this server")
    src_root = src_root.resolve()
    destination = Path(destination)
    if _inside(destination, src_root) or _inside(src_root, destination):
        raise ImportRefused(f"{src_root}: cannot import a folder into itself")
    report = report if report is not None else ImportReport(destination)
    accepted: list[tuple[Path, PurePosixPath]] = []
    for path in _walk(src_root):
        rel = PurePosixPath(*path.relative_to(src_root).parts)
        if _is_system(rel.parts) or any(p.startswith(".") for p in rel.parts):
            report.rejected.append(Rejected(str(rel), "hidden or operating-system file, skipped"))
        elif path.is_symlink():
            report.rejected.append(Rejected(str(rel), "symbolic link (not followed)"))
        elif not path.is_file():
            report.rejected.append(Rejected(str(rel), "not a regular file"))
        elif not _suffix_ok(rel):
            report.rejected.append(Rejected(str(rel), _not_image_reason(rel)))
        else:
            accepted.append((path, rel))
    if len(accepted) > limits.max_entries:
        raise ImportRefused(f"the folder has more than {limits.max_entries} images")
    total = sum(path.stat().st_size for path, _ in accepted)
    if total > limits.max_total_bytes:
        raise ImportRefused(
            f"the folder holds {total / 1024**3:.2f} GB of images; the limit is "
            f"{limits.max_total_bytes / 1024**3:.2f} GB"
        )
    prefix = layout_prefix(rel for _, rel in accepted)
    for done, (path, rel) in enumerate(accepted):
        if progress:
            progress("copying images", done / len(accepted))
        inner = _under(rel, prefix)
        if inner is None:
            report.rejected.append(Rejected(str(rel), f"outside the data set folder '{prefix}/'"))
            continue
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            report.rejected.append(Rejected(
                str(rel),
                f"{size / 1024**2:.0f} MB is above the "
                f"{limits.max_file_bytes / 1024**2:.0f} MB limit per image",
            ))
            continue
        target = destination.joinpath(*inner.parts)
        try:
            with open(path, "rb") as src:
                result = _copy_stream(src, target, size)
        except OSError as exc:
            report.rejected.append(Rejected(str(rel), f"cannot read the file ({exc.strerror})"))
            continue
        if isinstance(result, str):
            report.rejected.append(Rejected(str(rel), result))
            continue
        tmp, digest, _ = result
        _place(tmp, target, digest, str(inner), report)
    report.dataset_root = find_dataset_root(destination)
    return report


# --------------------------------------------------------------------------- layout


def layout_prefix(paths: Iterable[PurePosixPath]) -> PurePosixPath:
    """The folder inside the source that holds ``train/``, ``test/``, ``good/`` or ``defect/``.

    People zip the folder, not its contents, so the layout often sits one or two levels down
    (``mydata/train/good``). The shallowest folder with a layout marker wins; two different
    ones at the same depth are ambiguous and refused, rather than mixing two data sets.
    """
    found: set[PurePosixPath] = set()
    for rel in paths:
        parts = rel.parts[:-1]  # folders only: a file named "good" is not a layout
        for i, part in enumerate(parts):
            if part in _LAYOUT_MARKERS:
                found.add(PurePosixPath(*parts[:i]))
                break
    if not found:
        raise ImportRefused(
            "no data set found. Put good images in train/good/ (MVTec layout: test/good/, "
            "test/<defect type>/, masks in ground_truth/<defect type>/<name>_mask.png) or in "
            "good/ and defect/ (flat layout, masks in mask/)"
        )
    depth = min(len(p.parts) for p in found)
    shallowest = sorted(p for p in found if len(p.parts) == depth)
    if len(shallowest) > 1:
        names = ", ".join(str(p) or "." for p in shallowest)
        raise ImportRefused(f"the source holds several data sets ({names}); import one at a time")
    return shallowest[0]


def _under(rel: PurePosixPath, prefix: PurePosixPath) -> PurePosixPath | None:
    n = len(prefix.parts)
    if rel.parts[:n] != prefix.parts or len(rel.parts) == n:
        return None
    return PurePosixPath(*rel.parts[n:])


def find_dataset_root(folder: Path) -> Path | None:
    """``folder`` when engine.data recognises a layout there (MVTec or flat), else None."""
    try:
        discover(folder, validate=False)
    except DatasetError:
        return None
    return Path(folder)


# --------------------------------------------------------------------------- into a project


@dataclass
class DataImport:
    """A files report (what was copied or refused) and what the project made of the files."""

    project: str
    files: ImportReport
    found: int = 0
    added: int = 0
    problems: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (an import job's result; what the Datasets page shows)."""
        return {
            "project": self.project, "found": self.found, "added": self.added,
            "problems": self.problems,
            "dataset_root": str(self.files.dataset_root) if self.files.dataset_root else None,
            "imported": len(self.files.imported), "unchanged": len(self.files.unchanged),
            "rejected": [{"name": r.name, "reason": r.reason} for r in self.files.rejected],
        }


def _fresh_dir(home: Path, name: str) -> Path:
    """An unused import folder for a new project (two names can share a slug)."""
    base = import_dir(home, name)
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _undo(files: ImportReport, created: bool) -> None:
    """Take back what a failed or cancelled import wrote: a new project's whole folder, or
    the files it added to an existing project's folder (and the folders they emptied), so a
    failure never leaves files that no database row knows about."""
    destination = files.destination
    if created:
        shutil.rmtree(destination, ignore_errors=True)
        return
    for rel in files.imported:
        target = destination.joinpath(*PurePosixPath(rel).parts)
        target.unlink(missing_ok=True)
        parents = [p for p in target.parents if destination in p.parents]
        _remove_empty(list(reversed(parents)))


def import_data(
    ctx: Kensa,
    name: str,
    *,
    zip_file: str | os.PathLike[str] | BinaryIO | None = None,
    folder: str | os.PathLike[str] | None = None,
    create: bool = False,
    limits: ImportLimits = ImportLimits(),
    progress: ProgressFn | None = None,
) -> DataImport:
    """Import a zip or a server folder into project ``name`` (new when ``create``).

    ``folder`` must lie under an import root (:func:`allowed_folder`): this is the one entry
    point of the pages' and jobs' folder imports.

    A new project gets a fresh ``imports/<name>/`` folder; an existing one receives the files
    in its own import folder and is re-scanned, so only new images are added. A project that
    reads a folder outside ``imports/`` (made with the CLI) is re-scanned only: Kensa does
    not write into folders it does not own.

    ``progress(stage, fraction)`` is called per file (copying: 0-0.6, indexing: 0.6-1). On any
    failure (a job's Cancel, a full disk, a database error) what the import wrote is removed
    again (:func:`_undo`) and the exception goes on to the job, which shows it as a message.
    """
    try:
        name = clean_name(name)
    except NameRefused as exc:
        raise ImportRefused(str(exc)) from None
    if (zip_file is None) == (folder is None):
        raise ImportRefused("choose either a zip file or a folder")
    existing = {p["name"]: p for p in list_projects(ctx)}
    if create and name in existing:
        raise ImportRefused(f"a project named {name!r} already exists; choose another name")
    if not create and name not in existing:
        raise ImportRefused(f"there is no project named {name!r}")
    if folder is not None:
        folder = allowed_folder(ctx, folder)  # before anything is read or created
    if create:
        destination = _fresh_dir(ctx.home, name)
    else:
        destination = Path(existing[name]["data_root"])
        if not _inside(destination, ctx.home / "imports"):
            raise ImportRefused(
                f"project {name!r} reads its images from {destination}, which Kensa does not "
                "manage; copy new images there and press Re-scan"
            )
    report_fn = progress or (lambda stage, fraction: None)

    def copying(stage: str, fraction: float) -> None:
        report_fn(stage, 0.6 * fraction)

    def indexing(stage: str, fraction: float) -> None:
        report_fn(stage, 0.6 + 0.4 * fraction)

    files = ImportReport(destination)
    try:
        if zip_file is not None:
            import_zip(zip_file, destination, limits, copying, files)
        else:
            import_folder(folder, destination, limits, copying, files)
        if files.dataset_root is None:
            raise ImportRefused("no images could be imported; see the list of refused files")
        report = create_project(ctx, name, files.dataset_root, progress=indexing,
                                refused=[(r.name, r.reason) for r in files.rejected])
    except BaseException:
        _undo(files, create)
        raise
    return DataImport(name, files, report.found, report.added, report.problems)


def save_upload(ctx: Kensa, data: BinaryIO) -> Path:
    """Keep an uploaded file under ``$KENSA_HOME/uploads/`` for the import job to read.

    The job may run in another process or on another machine sharing ``KENSA_HOME``, so an
    upload held in the page's memory must become a file first (written to a temp name and
    renamed: a worker never sees half of it). The job deletes it when it is done.
    """
    folder = ctx.home / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(data, out, _CHUNK)
        target = folder / (Path(tmp).stem + ".zip")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def start_import_job(
    ctx: Kensa,
    name: str,
    *,
    zip_file: BinaryIO | None = None,
    folder: str | os.PathLike[str] | None = None,
    create: bool = False,
) -> int:
    """:func:`import_data` as a job (pages): the copy and the hashing never block a page.

    What can be refused at once is refused here (no name, both or neither source, a name
    taken or unknown); everything else is the job's to report. Returns the job id.
    """
    from services.jobs.api import submit

    try:
        name = clean_name(name)
    except NameRefused as exc:
        raise ImportRefused(str(exc)) from None
    if (zip_file is None) == (folder is None or not str(folder).strip()):
        raise ImportRefused("choose either a zip file or a folder")
    existing = {p["name"]: p for p in list_projects(ctx)}
    if create and name in existing:
        raise ImportRefused(f"a project named {name!r} already exists; choose another name")
    if not create and name not in existing:
        raise ImportRefused(f"there is no project named {name!r}")
    payload: dict[str, object] = {"name": name, "create": create}
    if zip_file is not None:
        payload["zip"] = ctx.stored(save_upload(ctx, zip_file))
    else:
        payload["folder"] = str(allowed_folder(ctx, str(folder)))  # the job checks it again
    project_id = existing[name]["id"] if name in existing else None
    return submit(ctx, "import", payload, project_id=project_id)


def rescan(ctx: Kensa, name: str) -> DataImport:
    """Index the project's folder again: new files are added, problems re-validated."""
    project = get_project(ctx, name)
    report = create_project(ctx, name, project["data_root"])
    files = ImportReport(Path(project["data_root"]), Path(project["data_root"]))
    return DataImport(name, files, report.found, report.added, report.problems)
