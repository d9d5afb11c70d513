"""Rebuild the bundled demo subset from the full Magnetic Tile Defect data set.

Kept so the selection is reproducible and auditable: every file is copied unchanged, chosen
deterministically (sorted names, even stride) among images no longer than ``MAX_SIDE`` px, so
the demo stays small (a few MB) and trains in seconds on a laptop CPU.

    python demo_data/make_demo.py /work/shared/datasets/magnetic_tile
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

MAX_SIDE = 400
COUNTS = {"train/good": 20, "test/good": 10}
PER_DEFECT = 3
OUT = Path(__file__).resolve().parent / "magnetic_tile_demo"


def _small(path: Path) -> bool:
    with Image.open(path) as im:
        return max(im.size) <= MAX_SIDE


def _mask_ok(mask: Path) -> bool:
    """The source's soft masks count as defect above 127; a few are empty there: skip those."""
    return mask.is_file() and bool((np.asarray(Image.open(mask).convert("L")) > 127).any())


def _pick(paths: list[Path], n: int) -> list[Path]:
    step = max(1, len(paths) // n)
    return paths[::step][:n]


def main(source: Path) -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    for sub, n in COUNTS.items():
        for p in _pick([p for p in sorted((source / sub).glob("*.jpg")) if _small(p)], n):
            (OUT / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, OUT / sub / p.name)
    for type_dir in sorted(d for d in (source / "test").iterdir() if d.name != "good"):
        mask_dir = source / "ground_truth" / type_dir.name
        usable = [p for p in sorted(type_dir.glob("*.jpg"))
                  if _small(p) and _mask_ok(mask_dir / f"{p.stem}_mask.png")]
        for p in _pick(usable, PER_DEFECT):
            for src, dst in ((p, OUT / "test" / type_dir.name / p.name),
                             (mask_dir / f"{p.stem}_mask.png",
                              OUT / "ground_truth" / type_dir.name / f"{p.stem}_mask.png")):
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    for f in OUT.rglob("*"):
        if f.is_file():
            f.chmod(0o644)
        else:
            f.chmod(0o755)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/datasets/magnetic_tile"))
