"""Detection-quality search: bank settings x image-score rules, both data sets, in one process.

    python bench/quality_search.py --data ../shared/datasets/toothbrush \\
        --data ../shared/datasets/magnetic_tile --subset 60 24 \\
        --configs '[{}, {"image_size": 512}]' --shots 1,4,16 --seeds 0,1,2 [--json FILE]

A bank setting (a ``FewShotConfig`` override, plus six search-only keys: ``"pool"``, the width
of the neighbourhood averaged into a patch vector, ``"out_indices"``, other backbone stages,
``"second_size"``, a second model at that size whose map joins the first's in the rules
``scales_mean`` / ``scales_max``, see ``_two_scales``, ``"max_side_factor"``, the cap on an
image's working side in multiples of ``image_size``, ``engine.models.fewshot.MAX_SIDE_FACTOR``,
``"bank_scales"``, factors by which every shot is also shrunk into the bank, as augmented
copies, and ``"map_cap"``, a second pass of every image worked above that multiple of
``image_size``, at that side, whose map replaces or joins the first's in the rules ``mapcap``,
``mapcap_mean``, ``mapcap_mean_max``, ``mapcap_clip`` and ``mapcap_score``, see
``_capped_map``; with cap 0.75, ``mapcap_clip`` is what the model's ``coarse_map`` does,
but the ``max`` rule's map here leaves that view out, so ``{"coarse_map": false}`` and ``{}``
give the same rows) is
fitted once per (data set, shots, seed); every test image is then searched once for its ``K``
nearest bank vectors, and every image-score rule (``max`` of the smoothed map, the mean of its
top 1 % / 0.1 % of pixels, the mean of the top 1 % of patches, PatchCore's density reweighting,
the mean of 3 neighbours; and maps: smoothed with σ = 10 and 16, the mean of the default and
the σ = 16 map, the σ = 16 map scaled to the default's maximum, the map minus its median) is
computed from those same distances, so the rules cost nothing extra to compare. Prints one JSON
line per (data set, setting, shots, seed), with the image AUROC of each defect type against the
goods under ``max``, and at the end the mean of every (data set, setting) over its shots and
seeds. Image and pixel AUROC and AUPRO; ``bench/fewshot.py`` times the chosen settings.
``--size-split PX`` adds the ``max`` rule's image and pixel AUROC inside two groups of test
images, long side below PX and at least PX (``*_small`` / ``*_large``): on a data set whose
defect types differ in image size (magnetic tile), it tells a setting that finds defects from
one that only raises the scores of the larger images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fewshot import choose_shots, stratified_tests  # noqa: E402

#: neighbours searched per patch: the rules below read at most this many
K = 3
#: wider Gaussian smoothing of the nearest-neighbour map, each a rule of its own (map and max)
WIDE_SIGMAS = (10.0, 16.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="detection-quality search")
    parser.add_argument("--data", action="append", required=True)
    parser.add_argument("--configs", default="[{}]", help="JSON list of FewShotConfig overrides")
    parser.add_argument("--shots", default="1,4,16")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--subset", type=int, nargs=2, metavar=("GOODS", "PER_TYPE"),
                        help="stratified test subset (applied to data sets with > 200 tests)")
    parser.add_argument("--size-split", type=int, metavar="PX",
                        help="also report image/pixel AUROC below / from this long side")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)

    import numpy as np

    from engine.data import discover, load_image, load_mask
    from engine.metrics import image_metrics, pixel_metrics

    rows = []
    for data in args.data:
        index = discover(Path(data), validate=False)
        tests = list(index.select(split="test"))
        if args.subset and len(tests) > 200:
            tests = stratified_tests(index, *args.subset)
        images = [load_image(r.path) for r in tests]
        masks = [load_mask(r.mask_path, im.shape[:2]) if r.mask_path else None
                 for r, im in zip(tests, images, strict=True)]
        labels = np.array([int(r.label == "defect") for r in tests])
        usable = [i for i, r in enumerate(tests) if r.label == "good" or masks[i] is not None]
        goods = [r.path for r in index.select(split="train", label="good")]
        for overrides in json.loads(args.configs):
            for shots in [int(s) for s in args.shots.split(",")]:
                for seed in [int(s) for s in args.seeds.split(",")]:
                    started = time.perf_counter()
                    train = [load_image(p) for p in choose_shots(goods, shots, seed)]
                    scored = score_all(overrides, train, images, seed)
                    row = {"data": Path(data).name, "config": overrides, "shots": shots,
                           "seed": seed, "n_test": len(tests),
                           "seconds": round(time.perf_counter() - started, 1)}
                    for rule, (scores, maps) in scored.items():
                        row[f"image_{rule}"] = round(
                            image_metrics(scores, labels)["image_auroc"], 4)
                        if maps is not None:
                            pixel = pixel_metrics([maps[i] for i in usable],
                                                  [masks[i] for i in usable])
                            row[f"pixel_{rule}"] = round(pixel["pixel_auroc"], 4)
                            row[f"aupro_{rule}"] = round(pixel["aupro"], 4)
                    scores = scored["max"][0]
                    if args.size_split:
                        row.update(_size_groups(scores, scored["max"][1], labels, masks,
                                                usable, images, args.size_split))
                    for name in sorted({r.defect_type or "defect" for r in tests
                                        if r.label == "defect"}):
                        keep = [i for i, r in enumerate(tests) if r.label == "good"
                                or (r.defect_type or "defect") == name]
                        row[f"type_{name}"] = round(image_metrics(
                            scores[keep], labels[keep])["image_auroc"], 3)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    summary: dict[tuple, list] = defaultdict(list)
    for row in rows:
        summary[(row["data"], json.dumps(row["config"]))].append(row)
    for (data, config), group in summary.items():
        keys = [k for k in group[0] if k.startswith(("image_", "pixel_", "aupro_", "type_"))]
        print(json.dumps({"mean": data, "config": json.loads(config), "runs": len(group),
                          **{k: round(float(np.mean([g[k] for g in group])), 4) for k in keys}}),
              flush=True)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rows, indent=1))
    return 0


def score_all(overrides: dict, train: list, images: list, seed: int) -> dict:
    """Fit one bank; per rule, (image scores, anomaly maps or None when the map is the base's)."""
    import cv2
    import numpy as np

    from engine.models.fewshot import FewShotConfig, FewShotPatchCore
    from engine.models.preprocess import grid_to_work, resize_map

    overrides = dict(overrides)
    cap = overrides.pop("max_side_factor", None)
    if cap is not None:  # read by FewShotPatchCore.working_side at every resize
        import engine.models.fewshot as fewshot

        saved_cap, fewshot.MAX_SIDE_FACTOR = fewshot.MAX_SIDE_FACTOR, float(cap)
        try:
            return score_all(overrides, train, images, seed)
        finally:
            fewshot.MAX_SIDE_FACTOR = saved_cap
    second = overrides.pop("second_size", None)
    map_cap = overrides.pop("map_cap", None)
    copies = overrides.pop("bank_scales", None)
    pool = overrides.pop("pool", None)
    stages = overrides.pop("out_indices", None)
    if stages is not None:  # try other backbone stages without a registry entry
        import dataclasses

        import engine.backbones as backbones

        name = overrides.get("backbone", backbones.DEFAULT_BACKBONE)
        saved = backbones.REGISTRY[name]
        backbones.REGISTRY[name] = dataclasses.replace(saved, out_indices=tuple(stages))
    try:
        model = FewShotPatchCore(FewShotConfig(seed=seed, **overrides))
    finally:
        if stages is not None:
            backbones.REGISTRY[name] = saved
    if pool is not None:  # a wider neighbourhood averaged into each patch vector
        from torch import nn

        model.extractor.pool = nn.AvgPool2d(pool, stride=1, padding=pool // 2)
    if copies:  # each shot also shrunk by these factors, as augmented copies (views: shots)
        from engine.models.base import ImageSource

        shrunk = [cv2.resize(im, (max(8, round(im.shape[1] * f)), max(8, round(im.shape[0] * f))),
                             interpolation=cv2.INTER_AREA) for f in copies for im in train]
        model.fit([*train, *shrunk],
                  sources=[*(ImageSource(f"shot{i}", "") for i in range(len(train))),
                           *(ImageSource(f"copy{i}", "", augmented=True)
                             for i in range(len(shrunk)))])
    else:
        model.fit(train)
    bank = model.bank
    assert bank is not None
    sigma = model.config.blur_sigma
    out: dict[str, tuple[list, list | None]] = defaultdict(lambda: ([], []))

    def smooth(grid: np.ndarray, work: tuple[int, int]) -> np.ndarray:
        work_map = grid_to_work(grid, *work)
        return cv2.GaussianBlur(work_map, (0, 0), sigma) if sigma > 0 else work_map

    works = []  # each image's working size, for a second model's σ
    for image in images:
        tensor = model.working_tensor(image)
        feats = model._features(tensor)[0]
        gh, gw = (int(v) for v in feats.shape[1:])
        queries = feats.flatten(1).T
        knn = bank.knn(queries, k=min(K, len(bank)))
        d = knn.distances.float().cpu().numpy().reshape(gh, gw, -1)
        work = tuple(int(v) for v in tensor.shape[-2:])
        works.append(work)
        base = smooth(d[..., 0], work)
        top = np.sort(base.ravel())[::-1]
        grid_top = np.sort(d[..., 0].ravel())[::-1]
        add = {
            "max": base.max(),
            "top1pct": top[: max(1, top.size // 100)].mean(),
            "top01pct": top[: max(1, top.size // 1000)].mean(),
            "grid_top1pct": grid_top[: max(1, grid_top.size // 100)].mean(),
            "reweight": base.max() * _density_weight(bank, queries, knn, d[..., 0]),
        }
        for rule, value in add.items():
            out[rule][0].append(float(value))
        out["max"][1].append(resize_map(base, *image.shape[:2]))
        unsmoothed = grid_to_work(d[..., 0], *work)
        for wide in WIDE_SIGMAS:  # the same distances, smoothed wider: map and its maximum
            wide_map = cv2.GaussianBlur(unsmoothed, (0, 0), wide)
            out[f"sigma{wide:g}"][0].append(float(wide_map.max()))
            out[f"sigma{wide:g}"][1].append(resize_map(wide_map, *image.shape[:2]))
        # (wide_map is now the widest one, WIDE_SIGMAS being in increasing order)
        # where from the widest map, how much from the default one: their mean, and the wide
        # map scaled to the default maximum (the score stays the hottest point of the map)
        blend = (base + wide_map) / 2
        out["blend"][0].append(float(blend.max()))
        out["blend"][1].append(resize_map(blend, *image.shape[:2]))
        out["scaled"][0].append(float(base.max()))
        out["scaled"][1].append(resize_map(wide_map * (base.max() / wide_map.max()),
                                           *image.shape[:2]))
        # each map against its own median: a part raised all over (colour) is not a spot
        centred = base - np.median(base)
        out["minus_median"][0].append(float(centred.max()))
        out["minus_median"][1].append(resize_map(centred, *image.shape[:2]))
        knn3 = smooth(d.mean(axis=2), work)
        out["knn3"][0].append(float(knn3.max()))
        out["knn3"][1].append(resize_map(knn3, *image.shape[:2]))
        if map_cap is not None:
            _capped_map(out, model, image, base, float(map_cap), smooth)
    if second is not None:  # a second, coarser model beside the first: combined maps
        _two_scales(out, FewShotConfig(seed=seed, **{**overrides, "image_size": second}),
                    train, images, works)
    return {rule: (np.asarray(s), m if m else None) for rule, (s, m) in out.items()}


def _capped_map(out: dict, model, image, base, cap: float, smooth) -> None:
    """Rules ``mapcap*``: an image worked above ``cap`` x ``image_size`` (and above
    ``image_size``) is scored a second time at ``cap`` x ``image_size`` against the same bank
    (shrunk from the original image, where the engine's ``coarse_map`` shrinks the working
    tensor: the same within resampling). The image score stays the first pass's maximum and
    the map is the second pass's (``mapcap``), the mean of both (``mapcap_mean``), or the mean
    with the second capped at the score (``mapcap_clip``), or the larger of the first and the
    capped second (``mapcap_raise``); ``mapcap_mean_max`` scores the mean
    map's maximum and ``mapcap_score`` the second pass's (= ``max_side_factor`` = cap)."""
    import numpy as np

    from engine.models.preprocess import resize_map, to_tensor

    first = resize_map(base, *image.shape[:2])
    side = int(cap * model.config.image_size)
    if model.working_side(image) <= max(side, model.config.image_size):
        second, score = first, float(base.max())
    else:
        tensor = to_tensor(image, side)
        feats = model._features(tensor)[0]
        grid = model.bank.knn(feats.flatten(1).T, k=1).distances[:, 0].float().cpu().numpy()
        work = tuple(int(v) for v in tensor.shape[-2:])
        small = smooth(grid.reshape(feats.shape[1:]), work)
        second, score = resize_map(small, *image.shape[:2]), float(small.max())
    mean = (first + second) / 2
    clipped = (first + np.minimum(second, base.max())) / 2
    raised = np.maximum(first, np.minimum(second, base.max()))
    for rule, amap, value in (("mapcap", second, base.max()),
                              ("mapcap_mean", mean, base.max()),
                              ("mapcap_mean_max", mean, mean.max()),
                              ("mapcap_clip", clipped, base.max()),
                              ("mapcap_raise", raised, base.max()),
                              ("mapcap_score", second, score)):
        out[rule][0].append(float(value))
        out[rule][1].append(np.asarray(amap, dtype=np.float32))


def _two_scales(out: dict, config, train: list, images: list, works: list) -> None:
    """Rules ``scales_mean`` / ``scales_max``: the default map and a second model's (its own
    bank at ``config.image_size``, smoothed at the same physical σ), each divided by the median
    image maximum of its own run, then averaged / maximised. The scaling reads the test images
    (transductive), so this is an optimistic emulation of a two-scale detector, not one."""
    import cv2
    import numpy as np

    from engine.models.fewshot import FewShotPatchCore
    from engine.models.preprocess import grid_to_work, resize_map

    model = FewShotPatchCore(config)
    model.fit(train)
    coarse = []
    for image, fine in zip(images, works, strict=True):
        tensor = model.working_tensor(image)
        feats = model._features(tensor)[0]
        grid = model.bank.knn(feats.flatten(1).T, k=1).distances[:, 0].float().cpu().numpy()
        work = tuple(int(v) for v in tensor.shape[-2:])
        sigma = config.blur_sigma * work[0] / fine[0]  # the default's σ in this model's pixels
        smoothed = cv2.GaussianBlur(grid_to_work(grid.reshape(feats.shape[1:]), *work), (0, 0),
                                    sigma)
        coarse.append(resize_map(smoothed, *image.shape[:2]))
    fine_maps = out["max"][1]
    scale_a = float(np.median([m.max() for m in fine_maps]))
    scale_b = float(np.median([m.max() for m in coarse]))
    for rule, combine in (("scales_mean", lambda a, b: (a / scale_a + b / scale_b) / 2),
                          ("scales_max", lambda a, b: np.maximum(a / scale_a, b / scale_b))):
        for a, b in zip(fine_maps, coarse, strict=True):
            combined = combine(a, b)
            out[rule][0].append(float(combined.max()))
            out[rule][1].append(combined)


def _size_groups(scores, maps, labels, masks, usable: list[int], images: list, split: int
                 ) -> dict[str, float]:
    """The ``max`` rule's image / pixel AUROC among the test images whose long side is below
    ``split`` (``_small``) and at least ``split`` (``_large``)."""
    from engine.metrics import image_metrics, pixel_metrics

    out, scorable = {}, set(usable)
    large = [max(image.shape[:2]) >= split for image in images]
    for group, wanted in (("small", False), ("large", True)):
        chosen = [i for i, is_large in enumerate(large) if is_large is wanted]
        if len(set(labels[chosen])) == 2:
            out[f"image_max_{group}"] = round(
                image_metrics(scores[chosen], labels[chosen])["image_auroc"], 4)
        pixels = [i for i in chosen if i in scorable]
        if any(masks[i] is not None for i in pixels) and maps is not None:
            out[f"pixel_max_{group}"] = round(pixel_metrics(
                [maps[i] for i in pixels], [masks[i] for i in pixels])["pixel_auroc"], 4)
    return out


def _density_weight(bank, queries, knn, d1, support: int = 9) -> float:
    """PatchCore's reweighting (paper eq. 7, anomalib's ``compute_anomaly_score``) at the
    image's most anomalous patch: 1 - softmax over its distances to the ``support`` bank
    neighbours of its nearest bank vector, taken at that vector. A test patch whose nearest
    normal lies in a sparse region of the bank (a rare normal) is scored down."""
    import torch

    at = int(d1.argmax())
    nearest = int(knn.indices[at, 0])
    support_rows = bank.knn(bank.vectors[nearest : nearest + 1],
                            k=min(support, len(bank))).indices[0]
    dist = (queries[at : at + 1].to(bank.device) - bank.vectors[support_rows]).norm(dim=1)
    return float(1 - torch.softmax(dist, dim=0)[0])


if __name__ == "__main__":
    raise SystemExit(main())
