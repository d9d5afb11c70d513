"""The drift report on a trained tiny project with three lots: normal, brightened, defect-heavy.

The brightened lot must be blamed on the light (brightness named), the defect-heavy lot on the
scores; rows land in ``drift_reports`` once per (lot, statistic) however often the report runs.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import db.repositories as repo
from services import cli
from services.context import Kensa
from services.inference.batches import score_batch
from services.monitoring import drift_overview
from tests.synthetic import texture, with_defect, write_png

N = 8


def _folder(root: Path, kind: str, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / kind
    for i in range(N):
        image = texture(rng, 96)
        if kind == "bright":
            image = np.clip(image.astype(np.int16) + 45, 0, 255).astype(np.uint8)
        if kind == "defects":
            image, _ = with_defect(rng, image)
        write_png(folder / f"{kind}_{i:02d}.png", image)
    return folder


@pytest.fixture
def three_lots(ctx: Kensa, project: str, trained: dict[str, Any], tmp_path: Path) -> list[str]:
    names = []
    for kind, seed in (("normal", 100), ("bright", 200), ("defects", 300)):
        score_batch(ctx, project, _folder(tmp_path / "lots", kind, seed), kind)
        names.append(kind)
    return names


def _rows(ctx: Kensa, project: str) -> list[tuple[Any, ...]]:
    with ctx.session(readonly=True) as s:
        project_id = repo.get_project_by_name(s, project).id
        return [(r.id, r.batch_id, r.statistic, r.alert, r.details)
                for r in repo.list_drift_reports(s, project_id=project_id)]


def test_three_lots_verdicts_alerts_and_stored_rows(
    ctx: Kensa, project: str, three_lots: list[str]
) -> None:
    overview = drift_overview(ctx, project)
    assert [lot.name for lot in overview.lots] == three_lots
    normal, bright, defects = overview.lots
    assert overview.reference_n >= 2 and overview.reference_label == "Model 1"

    assert normal.verdict == "stable" and normal.alerts == []
    assert set(normal.statistics) == {"scores", "brightness", "contrast", "sharpness",
                                      "embedding"}
    assert normal.statistics["scores"]["ks_p"] > 0.05

    # the light changed, not the parts: brightness is named, the scores did not move
    assert bright.verdict == "drift"
    assert bright.alerts[0].startswith("brightness rose")
    assert "lighting" in bright.alerts[0]
    assert bright.quality_change["brightness"] > 0.2
    assert not any("scores" in a for a in bright.alerts)

    # the parts changed: the scores alert comes first and says the images look as before
    assert defects.verdict == "drift" and defects.reject_rate > 0.5
    assert defects.alerts[0].startswith("lot defects scores above the reference")
    assert "the images look as before" in defects.alerts[0]
    assert defects.statistics["scores"]["ks_p"] < 0.05
    assert defects.statistics["embedding"]["p_value"] < 0.05
    assert overview.headline.startswith("Drift in 2 of 3 lots")

    median = overview.charts["median"]
    assert median.values == pytest.approx([lot.median for lot in overview.lots])
    assert median.rule_hits[0] == [] and "rule 1: beyond 3σ" in median.rule_hits[2]
    assert median.lcl < median.center < median.ucl
    assert overview.charts["reject_rate"].lcl >= 0
    assert overview.changes == []

    rows = _rows(ctx, project)
    per_lot = Counter(batch for _, batch, *_ in rows)
    assert set(per_lot) == {lot.batch_id for lot in overview.lots}
    keys = [(batch, stat) for _, batch, stat, _, _ in rows]
    assert len(keys) == len(set(keys))  # one row per (lot, statistic)
    by_key = {(batch, stat): (alert, details) for _, batch, stat, alert, details in rows}
    assert by_key[(bright.batch_id, "brightness_ks")][0] is True
    assert by_key[(normal.batch_id, "brightness_ks")][0] is False
    assert by_key[(defects.batch_id, "scores_ks")][0] is True
    assert by_key[(defects.batch_id, "verdict")][1]["verdict"] == "drift"
    assert by_key[(normal.batch_id, "verdict")][1]["reference_state_version_id"] == \
        normal.state_version_id

    # idempotent: a second run replaces the rows instead of adding to them
    again = drift_overview(ctx, project, embedding=False)
    rows_again = _rows(ctx, project)
    again_keys = Counter((batch, stat) for _, batch, stat, _, _ in rows_again)
    assert all(n == 1 for n in again_keys.values())
    # the same lots and statistics (no MMD this time), none of the old rows left
    assert set(again_keys) == {k for k in keys if k[1] != "embedding_mmd"}
    assert not {r[0] for r in rows} & {r[0] for r in rows_again}
    assert [lot.verdict for lot in again.lots] == ["stable", "drift", "drift"]
    assert "embedding" not in again.lots[0].statistics

    # a preview writes nothing
    before = _rows(ctx, project)
    drift_overview(ctx, project, embedding=False, store=False)
    assert _rows(ctx, project) == before


def test_cli_drift_json_shape(
    ctx: Kensa, project: str, three_lots: list[str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KENSA_HOME", str(ctx.home))
    monkeypatch.setenv("DATABASE_URL", ctx.database_url)
    monkeypatch.setenv("KENSA_DEMO", "0")
    assert cli.main(["--quiet", "drift", project, "--json", "--no-embedding"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [lot["name"] for lot in data["lots"]] == three_lots
    for lot in data["lots"]:
        assert {"name", "statistics", "alerts", "verdict", "median", "p95",
                "reject_rate"} <= set(lot)
        assert isinstance(lot["alerts"], list)
        assert all(isinstance(a, str) for a in lot["alerts"])
        assert set(lot["statistics"]["scores"]) >= {"ks", "ks_p", "psi", "wasserstein"}
    assert data["lots"][0]["alerts"] == []
    assert set(data["charts"]) == {"median", "p95", "reject_rate"}
    assert data["headline"].startswith("Drift")

    assert cli.main(["--quiet", "drift", project]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].startswith("Drift") and "brightness rose" in text

    assert cli.main(["--quiet", "drift", "no such project"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_no_lots_and_one_lot(ctx: Kensa, project: str, trained: dict[str, Any],
                             tmp_path: Path) -> None:
    empty = drift_overview(ctx, project)
    assert empty.lots == [] and empty.charts == {}
    assert empty.headline.startswith("No lots yet") and "--batch" in empty.headline
    assert empty.reference_n >= 2

    score_batch(ctx, project, _folder(tmp_path / "lots", "normal", 100), "first")
    one = drift_overview(ctx, project, embedding=False)
    assert [lot.name for lot in one.lots] == ["first"]
    assert one.charts["median"].rule_hits == [[]]
    assert "Control-chart rules need at least 2 lots" in one.headline


def test_untrained_project_says_what_to_do(ctx: Kensa, project: str) -> None:
    overview = drift_overview(ctx, project)
    assert overview.lots == [] and overview.headline.startswith("No trained model")


def test_threshold_and_bank_changes_are_marked(
    ctx: Kensa, project: str, trained: dict[str, Any], tmp_path: Path, new_goods: Any
) -> None:
    from services.history.versions import set_threshold, update_bank
    from services.inference.batches import get_active_model

    score_batch(ctx, project, _folder(tmp_path / "a", "normal", 100), "a")
    old = get_active_model(ctx, project).rule.value
    set_threshold(ctx, project, old * 1.02)
    score_batch(ctx, project, _folder(tmp_path / "b", "normal", 101), "b")
    update_bank(ctx, project, [new_goods(2, 7)])
    score_batch(ctx, project, _folder(tmp_path / "c", "normal", 102), "c")

    overview = drift_overview(ctx, project, embedding=False)
    assert [(c["lot_index"], c["kind"]) for c in overview.changes] == [(1, "threshold"),
                                                                       (2, "model")]
    assert overview.changes[0]["label"].startswith(f"threshold {old:.4g} → ")
    assert overview.changes[1]["label"] == "Model 1 · update 1"
    assert overview.reference_label == "Model 1 · update 1"
    assert "span model versions" in overview.headline
    first = overview.lots[0]
    assert first.model_label == "Model 1" and first.state_version_id != \
        overview.lots[2].state_version_id
    assert any("chart rules are not applied" in n for n in first.notes)
