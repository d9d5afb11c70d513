"""services.evaluation.stress on a real tiny training (tests/trained.py): the held-out good
images, the job, the CLI. Levels are tiny (2 areas x 1 contrast, 2 strengths x 2 changes) so a
test scores a few dozen 96 px images; expected values come from the model's own scores."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from db.models import Image
from engine.data import load_image
from services import cli
from services.context import Kensa
from services.evaluation.stress import (
    KIND,
    StressCancelled,
    detectability_sentences,
    held_out_goods,
    latest_stress,
    request_stress,
    robustness_sentences,
    run_stress,
    stress_job,
    switch_on,
)
from services.inference.batches import get_active_model, load_model
from services.jobs import api
from services.jobs.registry import kinds
from services.training.project import list_model_versions
from tests.trained import build_template, copy_home, stored_scores

TINY = {"areas": (0.01, 0.05), "contrasts": (1.0,), "strengths": (0.5, 1.0),
        "transforms": ["brighter", "noise"], "max_images": 3}


@pytest.fixture(scope="module")
def trained_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_template(tmp_path_factory.mktemp("trained"))


@pytest.fixture
def ctx(trained_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> Iterator[Kensa]:
    """A copy of the trained template on SQLite, also in the environment for the CLI."""
    home = copy_home(trained_template, tmp_path / "home")
    url = f"sqlite:///{home / 'kensa.db'}"
    monkeypatch.setenv("KENSA_HOME", str(home))
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("KENSA_LOCAL_WORKER", "0")
    context = Kensa.create(home, url)
    yield context
    context.close()


def test_held_out_goods_are_the_runs_good_validation_images(ctx: Kensa) -> None:
    mv = list_model_versions(ctx, "widgets")[0]["id"]
    goods = {n for n, (label, _) in stored_scores(ctx, "widgets", mv).items() if label == "good"}
    paths = held_out_goods(ctx, "widgets", mv)
    assert {Path(p).name for p in paths} == goods and len(paths) == len(goods) >= 3
    sample = held_out_goods(ctx, "widgets", mv, max_images=2, seed=1)
    assert len(sample) == 2 and set(sample) <= set(paths)
    assert sample == held_out_goods(ctx, "widgets", mv, max_images=2, seed=1)
    with pytest.raises(LookupError, match="not a finished training"):
        held_out_goods(ctx, "widgets", 999)


def test_run_stress_measures_the_model_in_use(ctx: Kensa) -> None:
    stages: list[float] = []
    result = run_stress(ctx, "widgets", progress=lambda s, f: stages.append(f), **TINY)
    active = get_active_model(ctx, "widgets")
    assert result["model_version_id"] == active.model_version_id
    assert result["threshold"] == active.rule.value
    assert result["n_images"] == 3 and result["image_side"] == 96 and not result["skipped"]
    assert stages == sorted(stages) and stages[-1] == 1.0

    # the unchanged scores are the model's own scores of those images
    model = load_model(active).model
    paths = held_out_goods(ctx, "widgets", None, max_images=3)
    assert [Path(p).name for p in paths] == result["images"]
    own = model.score([load_image(p) for p in paths]).scores
    assert result["baseline"]["max_score"] == pytest.approx(float(np.max(own)), rel=1e-4)

    det = result["detectability"]
    assert [(r["area"], r["contrast"]) for r in det["rows"]] == [(1.0, 1.0), (5.0, 1.0)]
    small, large = det["rows"]
    assert small["mean_score"] < large["mean_score"]  # a bigger defect looks less normal
    assert all(r["n"] == sum(s < result["threshold"] for s in own) for r in det["rows"])
    (smallest,) = det["smallest"]
    assert smallest["contrast"] == 1.0
    assert detectability_sentences(det)[0].startswith("At full contrast it ")

    rob = result["robustness"]
    assert [(r["transform"], r["strength"]) for r in rob["rows"]] == [
        ("brighter", 0.0), ("brighter", 0.5), ("brighter", 1.0),
        ("noise", 0.0), ("noise", 0.5), ("noise", 1.0)]
    unchanged = rob["rows"][0]
    assert unchanged["max_score"] == result["baseline"]["max_score"]
    assert {p["transform"] for p in rob["pushes_over"]} == {
        r["transform"] for r in rob["rows"] if r["pushed_over"] > 0}
    text = " ".join(robustness_sentences(rob))
    assert ("Augmentation page" in text) == bool(rob["pushes_over"])
    # the hint names the Augmentation page's switches that teach what pushed goods over
    expected = [{"brighter": "Brightness and contrast", "noise": "Sensor noise"}[p["transform"]]
                for p in rob["pushes_over"]]
    assert rob["switch_on"] == list(dict.fromkeys(expected))
    assert all(title in text for title in rob["switch_on"])


def test_the_hint_names_each_switch_once() -> None:
    pushed = [{"transform": t, "title": t, "group": "light", "strength": 0.5, "pushed_over": 1,
               "n": 2} for t in ("darker", "brighter", "jpeg")]
    switches = switch_on(pushed)
    assert switches == ["Brightness and contrast", "JPEG artefacts"]
    hint = robustness_sentences({"rows": [], "pushes_over": pushed, "switch_on": switches})[-1]
    assert hint.startswith("Train with a preset that switches on Brightness and contrast and "
                           "JPEG artefacts (Augmentation page)")


def test_job_kind_and_latest_result(ctx: Kensa) -> None:
    assert KIND in kinds()
    mv = list_model_versions(ctx, "widgets")[0]["id"]
    assert latest_stress(ctx, "widgets", mv) is None and stress_job(ctx, "widgets", mv) is None
    job_id = request_stress(ctx, "widgets", mv, **TINY)
    assert stress_job(ctx, "widgets", mv)["status"] == "queued"
    result = api.run_inline(ctx, job_id)
    job = stress_job(ctx, "widgets", mv)
    assert (job["id"], job["status"], job["progress"]) == (job_id, "done", 1.0)
    assert latest_stress(ctx, "widgets", mv) == result == job["result"]
    older = list_model_versions(ctx, "widgets")[1]["id"]
    assert latest_stress(ctx, "widgets", older) is None  # per model version
    with pytest.raises(ValueError, match="unknown stress test option"):
        request_stress(ctx, "widgets", mv, sizes=[1])


def test_cancel_stops_the_job(ctx: Kensa) -> None:
    mv = list_model_versions(ctx, "widgets")[0]["id"]
    job_id = request_stress(ctx, "widgets", mv, **TINY)
    assert api.cancel(ctx, job_id) == "cancelled"
    assert stress_job(ctx, "widgets", mv)["status"] == "cancelled"
    with pytest.raises(StressCancelled, match="cancelled while loading the model"):
        run_stress(ctx, "widgets", mv, cancelled=lambda: True, **TINY)


def test_a_model_without_held_out_goods_is_refused(ctx: Kensa) -> None:
    mv = list_model_versions(ctx, "widgets")[0]["id"]
    with ctx.session() as s:  # a person relabelled every held-out good image as a defect
        for img in s.scalars(select(Image).where(Image.label == "good", Image.split == "test")):
            img.label = "defect"
    with pytest.raises(ValueError, match="needs held-out good images"):
        request_stress(ctx, "widgets", mv)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["--quiet", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_detectability_and_robustness(ctx: Kensa, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    code, out, err = _cli(capsys, "detectability", "widgets", "--json", "--areas", "1,5",
                          "--contrasts", "1", "--max-images", "2")
    assert code == 0, err
    det = json.loads(out)
    assert [(r["area"], r["contrast"]) for r in det["rows"]] == [(1.0, 1.0), (5.0, 1.0)]
    assert all(0 <= r["detection_rate"] <= 1 for r in det["rows"])
    assert det["smallest"][0]["contrast"] == 1.0 and det["n_images"] == 2
    code, out, _ = _cli(capsys, "detectability", "widgets", "--areas", "5", "--contrasts",
                        "1", "--max-images", "2")
    assert code == 0 and "area %" in out and "At full contrast it " in out

    code, out, err = _cli(capsys, "robustness", "widgets", "--json", "--strengths", "1",
                          "--transforms", "blur", "--max-images", "2")
    assert code == 0, err
    rob = json.loads(out)
    assert [(r["transform"], r["strength"]) for r in rob["rows"]] == [("blur", 0.0),
                                                                     ("blur", 1.0)]
    code, out, err = _cli(capsys, "robustness", "widgets", "--transforms", "sunburn")
    assert code == 2 and "unknown transform" in err
    code, _, err = _cli(capsys, "detectability", "widgets", "--model-id", "999")
    assert code == 2 and "not a finished training" in err


def test_goods_already_over_the_threshold_are_said_not_hidden(ctx: Kensa) -> None:
    """A threshold under every good score: no defect can show as caught, so the report says
    why instead of a 100 % detection rate; robustness still runs."""
    from services.history.versions import set_threshold

    lowest = min(v for _, v in stored_scores(ctx, "widgets", list_model_versions(
        ctx, "widgets")[0]["id"]).values())
    set_threshold(ctx, "widgets", lowest / 2, confirm_extreme=True)
    result = run_stress(ctx, "widgets", **TINY)
    det, rob = result["detectability"], result["robustness"]
    assert det["rows"] == [] and det["smallest"] == []
    assert detectability_sentences(det) == [det["problem"]]
    assert "already score at or over the threshold" in det["problem"]
    assert all(r["share_over"] == 1.0 and r["margin"] is None for r in rob["rows"])
    assert rob["pushes_over"] == []  # none was under it to be pushed
    assert "already scores over the threshold" in robustness_sentences(rob)[0]
