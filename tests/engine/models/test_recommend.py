"""The decision table (the prior) and the measured pick: pure functions, no model is built."""

from __future__ import annotations

import pytest

from engine.models import registry
from engine.models.recommend import AUROC_TIE, TABLE, Measured, family, pick, prior

ZOO = ["kensa_patchcore", "anomalib_patchcore", "anomalib_padim", "anomalib_dfm",
       "anomalib_dfkde", "anomalib_cflow", "anomalib_draem", "anomalib_efficient_ad"]


def _order(*args, **kwargs) -> list[str]:
    return [name for name, _ in prior(*args, models=ZOO, **kwargs)]


def test_families_of_registry_names() -> None:
    assert family("kensa_patchcore") == "kensa_patchcore"
    assert family("anomalib_efficient_ad") == "efficientad"
    assert family("anomalib_reverse_distillation") == "reversedistillation"
    assert {family(n) for n in ZOO} <= set(TABLE)


def test_few_images_put_patchcore_first_and_say_why() -> None:
    ranked = prior(8, 5, models=ZOO)
    assert [n for n, _ in ranked[:2]] == ["kensa_patchcore", "anomalib_patchcore"]
    reasons = dict(ranked)
    assert "Made for few images" in reasons["kensa_patchcore"]
    assert "this project has 8" in reasons["kensa_patchcore"]
    assert "needs about 100 good images" in reasons["anomalib_draem"]
    assert "needs about 20 good images" in reasons["anomalib_padim"]
    # trained models that lack the images sink below the one-pass ones
    assert _order(8, 5).index("anomalib_padim") < _order(8, 5).index("anomalib_draem")


def test_real_time_with_enough_images_prefers_efficientad_or_padim() -> None:
    first, second = _order(300, 10, realtime=True)[:2]
    assert {first, second} == {"anomalib_efficient_ad", "anomalib_padim"}
    assert "Fast enough for real-time inspection" in dict(prior(300, 10, realtime=True,
                                                                models=ZOO))[first]
    assert _order(300, 10, realtime=True).index("anomalib_cflow") > 3  # slow to score
    # not real time: accuracy first, the memory bank still leads
    assert _order(300, 10)[0] == "kensa_patchcore"


def test_textures_and_objects_move_the_specialists() -> None:
    models = ["anomalib_padim", "anomalib_dfm"]
    assert [n for n, _ in prior(40, 3, texture=True, models=models)][0] == "anomalib_padim"
    assert "Strong on textures" in dict(prior(40, 3, texture=True, models=models))[
        "anomalib_padim"]
    assert "Strong on objects" in dict(prior(40, 3, texture=False, models=ZOO))[
        "kensa_patchcore"]
    assert "Strong on" not in " ".join(r for _, r in prior(40, 3, models=ZOO))  # unknown


def test_only_given_or_registered_models_are_named() -> None:
    assert prior(5, 1)[0][0] == registry.DEFAULT_MODEL
    assert sorted(n for n, _ in prior(5, 1)) == sorted(registry.names())
    ranked = prior(5, 1, models=["anomalib_patchcore", "mystery_model"])
    assert [n for n, _ in ranked] == ["anomalib_patchcore", "mystery_model"]
    assert "Not in the decision table" in ranked[1][1]
    assert prior(5, 1, models=[]) == []


def test_no_defect_images_says_measurement_uses_synthetic_defects() -> None:
    first = prior(5, 0, models=ZOO)[0][1]
    assert "synthetic defects" in first
    assert "synthetic defects" not in prior(5, 2, models=ZOO)[0][1]


def _m(model: str, auroc: float | None, ms: float | None, error: str | None = None
       ) -> Measured:
    return Measured(model, model.upper(), auroc, ms, error)


def test_pick_prefers_the_faster_of_two_within_the_tie() -> None:
    rows = [_m("kensa", 0.94, 48.0), _m("padim", 0.935, 12.0), _m("dfm", 0.80, 3.0)]
    chosen, why = pick(rows, ["kensa", "padim", "dfm"], prior_first="kensa")
    assert chosen == "padim"
    assert why.startswith("PADIM: image AUROC 0.94, as good as KENSA (0.94) within 0.01 and "
                          "4× faster (12 vs 48 ms per image).")
    assert "beats the table's first choice, KENSA" in why


def test_pick_keeps_the_best_when_nothing_is_close() -> None:
    rows = [_m("kensa", 0.97, 48.0), _m("padim", 0.90, 12.0)]
    chosen, why = pick(rows, ["kensa", "padim"], prior_first="kensa")
    assert chosen == "kensa"
    assert why == "KENSA: the best image AUROC 0.97, ahead of PADIM (0.90)."


def test_pick_the_best_and_fastest_says_both() -> None:
    rows = [_m("kensa", 0.95, 10.0), _m("stock", 0.95 - AUROC_TIE / 2, 30.0)]
    chosen, why = pick(rows, ["stock", "kensa"])
    assert chosen == "kensa"
    assert why == ("KENSA: the best image AUROC 0.95, and 3× faster than STOCK (0.94), which "
                   "is as good within 0.01.")


@pytest.mark.parametrize(("rows", "expected"), [
    ([_m("a", None, None, "ran out of memory"), _m("b", 0.8, 5.0)],
     "B: image AUROC 0.80, the only model that could be measured."),
    ([_m("a", None, None, "ran out of memory")],
     "No model could be measured (A: ran out of memory)."),
    ([], "No model could be measured."),
])
def test_pick_with_failures(rows: list[Measured], expected: str) -> None:
    assert pick(rows)[1] == expected


def test_pick_on_synthetic_defects_says_so() -> None:
    _, why = pick([_m("a", 0.9, 5.0)], synthetic=True)
    assert "synthetic defects painted into held-out good images" in why


def test_exact_ties_follow_the_prior_order() -> None:
    rows = [_m("a", 0.9, 10.0), _m("b", 0.9, 10.0)]
    assert pick(rows, ["b", "a"])[0] == "b"
    assert pick(rows, ["a", "b"])[0] == "a"
