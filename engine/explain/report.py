"""Words and documents of an explanation: the decision summary, the HTML report.

Both read the explanation's JSON form (plain numbers and strings) plus PNG pictures, so the
engine needs no service type, and the report says exactly what the JSON says.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

KIND_WORDS = {"spot": "a spot", "line": "a line or scratch", "area": "a larger area"}


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}g}"


def _where(box: Sequence[int], width: int, height: int) -> str:
    """'upper left', 'centre', ... of a box in an image of width x height."""
    cx, cy = (box[0] + box[2]) / 2 / width, (box[1] + box[3]) / 2 / height
    vertical = "upper" if cy < 1 / 3 else ("lower" if cy > 2 / 3 else "middle")
    horizontal = "left" if cx < 1 / 3 else ("right" if cx > 2 / 3 else "centre")
    if vertical == "middle":
        return "centre" if horizontal == "centre" else f"middle {horizontal}"
    return f"{vertical} {horizontal}" if horizontal != "centre" else f"{vertical} centre"


def summary(doc: Mapping[str, Any], width: int, height: int) -> str:
    """The decision in a few plain sentences, from the explanation's JSON."""
    verdict, score, threshold = doc["verdict"], doc["score"], doc["threshold"]
    conf = doc["confidence"]
    if verdict == "defect":
        head = (f"Defect: the anomaly score {_num(score)} is at or above the threshold "
                f"{_num(threshold)} (normalized {doc['normalized']:.2f}; 0.5 is the threshold).")
    else:
        head = (f"Good: the anomaly score {_num(score)} is below the threshold "
                f"{_num(threshold)} (normalized {doc['normalized']:.2f}; 0.5 is the threshold).")
    parts = [head]
    n = conf.get("held_out_good", 0)
    if n:
        parts.append(f"Held-out good images scored this high or higher with p-value "
                     f"{conf['p_value']:.2f}; the threshold flags "
                     f"{100 * (conf['false_alarm_rate'] or 0):.0f} % of them.")
    regions = doc["regions"]
    if regions:
        described = []
        for r in regions[:3]:
            text = (f"{KIND_WORDS.get(r['kind'], r['kind'])} in the "
                    f"{_where(r['box'], width, height)} ({r['area_pct']:.1f} % of the image, "
                    f"peak {_num(r['peak'])})")
            if r["nearest"]:
                nb = r["nearest"][0]
                text += (f", least unlike {nb['file_name']} at row {nb['row']}, column "
                         f"{nb['col']} (distance {_num(nb['distance'], 3)})")
            described.append(text)
        more = f" and {len(regions) - 3} more" if len(regions) > 3 else ""
        count = "1 region" if len(regions) == 1 else f"{len(regions)} regions"
        parts.append(f"{count} above the threshold: " + "; ".join(described) + more + ".")
    elif verdict == "good":
        parts.append("No part of the image reaches the threshold.")
    if not doc.get("neighbours_available", True):
        parts.append("This model keeps no training-patch positions, so no nearest normal "
                     "patches are shown.")
    return " ".join(parts)


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px} h2{font-size:17px;margin-top:28px}
.verdict{display:inline-block;padding:3px 10px;border-radius:4px;color:#fff;font-weight:600}
.defect{background:#c62828}.good{background:#2e7d32}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}img.pic{max-width:100%;border:1px solid #ccc}
.crops{display:flex;gap:12px;flex-wrap:wrap}.crop{font-size:12px;text-align:center}
.crop img{width:120px;height:120px;object-fit:contain;image-rendering:pixelated;
border:1px solid #999;background:#eee}
"""


def render_html(doc: Mapping[str, Any], pictures: Mapping[str, bytes],
                crops: Mapping[str, bytes]) -> str:
    """A self-contained page: every picture is a ``data:`` URL, no script, no external link.

    ``pictures``: ``overlay``, ``legend``, ``map`` PNGs; ``crops``: ``"q<i>"`` (query crop of
    region i) and ``"n<i>_<j>"`` (neighbour j of region i) PNGs; missing crops are said so.
    """
    e = html.escape
    conf = doc["confidence"]
    rows = [("Image", doc["image_name"]), ("sha256", doc["sha256"]),
            ("Score", _num(doc["score"])), ("Threshold", _num(doc["threshold"])),
            ("Normalized score (0.5 = threshold)", f"{doc['normalized']:.3f}"),
            ("Conformal p-value", _num(conf["p_value"], 3)),
            ("False-alarm rate at the threshold", _num(conf["false_alarm_rate"], 3)),
            ("kNN spread", _num(conf["knn_spread"], 3)),
            ("Model", doc["model_label"]), ("State version id", str(doc["state_version_id"])),
            ("Project", doc["project"])]
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           f"<title>Kensa explanation: {e(doc['image_name'])}</title>",
           f"<style>{_CSS}</style></head><body>",
           f"<h1>{e(doc['image_name'])} <span class='verdict {e(doc['verdict'])}'>"
           f"{e(doc['verdict'].upper())}</span></h1>",
           f"<p>{e(doc['summary'])}</p>", "<h2>Image</h2><table>"]
    out += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows]
    out.append("</table><h2>Confidence</h2><ul>")
    out += [f"<li>{e(w)}</li>" for w in conf["words"]]
    out.append("</ul><h2>Heatmap</h2>")
    if "overlay" in pictures:
        out.append(f"<img class='pic' alt='heatmap overlay' src='{data_url(pictures['overlay'])}'>")
    if "legend" in pictures:
        out.append(f"<p><img alt='colour scale' src='{data_url(pictures['legend'])}'><br>"
                   "The same colour means the same score in every image: the middle of the "
                   "scale is the threshold, the left end the typical good score.</p>")
    out.append("<h2>Regions</h2>")
    if not doc["regions"]:
        out.append("<p>No region reaches the threshold.</p>")
    else:
        out.append("<table><tr><th>#</th><th>box (x0, y0, x1, y1)</th><th>area</th>"
                   "<th>peak / mean</th><th>kind</th><th>measurements</th></tr>")
        for r in doc["regions"]:
            meas = ", ".join(f"{k} {_num(v, 3)}" for k, v in r["measurements"].items())
            out.append(f"<tr><td>{r['index']}</td><td>{e(str(tuple(r['box'])))}</td>"
                       f"<td>{r['area_px']} px ({r['area_pct']:.2f} %)</td>"
                       f"<td>{_num(r['peak'])} / {_num(r['mean'])}</td><td>{e(r['kind'])}</td>"
                       f"<td>{e(meas)}</td></tr>")
        out.append("</table>")
        for r in doc["regions"]:
            i = r["index"]
            out.append(f"<h2>Region {i}: nearest normal patches</h2><div class='crops'>")
            if f"q{i}" in crops:
                out.append(f"<div class='crop'><img alt='query' src='{data_url(crops[f'q{i}'])}'>"
                           "<br>this image</div>")
            for j, nb in enumerate(r["nearest"]):
                label = (f"{e(nb['file_name'])}<br>row {nb['row']}, col {nb['col']} "
                         f"({e(nb['view'])})<br>distance {_num(nb['distance'], 3)}")
                key = f"n{i}_{j}"
                pic = (f"<img alt='neighbour' src='{data_url(crops[key])}'>" if key in crops
                       else "<p>(training image not readable now)</p>")
                out.append(f"<div class='crop'>{pic}<br>{label}</div>")
            if not r["nearest"]:
                out.append("<p>No nearest patches for this model.</p>")
            out.append("</div>")
    if "map" in pictures:
        out.append("<h2>Pixel level: the raw anomaly map</h2>"
                   f"<img class='pic' alt='raw map' src='{data_url(pictures['map'])}'>"
                   f"<p>Raw scores from {_num(doc['map_min'])} (black) to "
                   f"{_num(doc['map_max'])} (white), scaled within this image.</p>")
    out.append("</body></html>")
    return "\n".join(out)
