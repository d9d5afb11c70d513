"""Colour mode: measured from the shots, kept with the bank, and it does what it says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.models.colour import hue_spread, reads_gray, to_gray
from engine.models.fewshot import FewShotConfig, FewShotPatchCore
from tests.synthetic import coloured_part, texture


def test_shots_of_two_colours_read_gray_and_of_one_colour_do_not() -> None:
    rng = np.random.default_rng(0)
    blue = [coloured_part(rng, 110) for _ in range(2)]
    red = [coloured_part(rng, 0) for _ in range(2)]
    assert hue_spread(blue) < 0.1
    assert hue_spread([blue[0], red[0]]) > 0.9
    assert reads_gray("auto", [*blue, red[0]])
    assert not reads_gray("auto", blue)
    assert not reads_gray("auto", [red[0]])  # one shot says nothing about colour
    grey = [texture(rng) for _ in range(3)]  # slightly tinted grey: no meaningful hue
    assert not reads_gray("auto", grey)
    assert reads_gray("gray", blue) and not reads_gray("rgb", [*blue, *red])
    with pytest.raises(ValueError, match="colour"):
        reads_gray("sepia", blue)  # type: ignore[arg-type]


def test_to_gray_gives_equal_channels_of_luma() -> None:
    tensor = torch.rand(1, 3, 8, 8)
    out = to_gray(tensor)
    assert out.shape == tensor.shape
    torch.testing.assert_close(out[:, 0], out[:, 2])
    luma = 0.299 * tensor[:, 0] + 0.587 * tensor[:, 1] + 0.114 * tensor[:, 2]
    torch.testing.assert_close(out[:, 1], luma)


def test_a_bank_of_two_colours_accepts_a_third_and_survives_save_load(tmp_path) -> None:
    """The point of the mode: a good part in a colour no shot had is not a defect."""
    rng = np.random.default_rng(1)
    shots = [coloured_part(rng, hue) for hue in (110, 0, 110, 0)]
    green = coloured_part(rng, 60)
    scratched = coloured_part(rng, 60)
    scratched[45:48, 30:66] = 255  # a bright scratch across the head
    auto = FewShotPatchCore(FewShotConfig(image_size=96, colour="auto"))
    auto.fit(shots)
    rgb = FewShotPatchCore(FewShotConfig(image_size=96, colour="rgb"))
    rgb.fit(shots)
    assert auto.state.gray and not rgb.state.gray
    auto_scores = auto.score([green, scratched]).scores
    assert auto_scores[1] > auto_scores[0]
    # colour-blind, the unseen colour is far closer to normal than it is to the RGB bank
    assert auto_scores[0] < 0.7 * rgb.score([green]).scores[0]
    auto.save(tmp_path)
    loaded = FewShotPatchCore.load(tmp_path)
    assert loaded.state.gray
    np.testing.assert_allclose(loaded.score([green]).scores, auto_scores[:1], rtol=1e-5)


def test_config_refuses_an_unknown_colour_mode() -> None:
    with pytest.raises(ValueError, match="colour"):
        FewShotConfig(colour="sepia")  # type: ignore[arg-type]


def test_held_out_goods_decide_colour_without_joining_the_bank() -> None:
    """One red shot keeps colour; with a blue good held out beside it, colour is ignored,
    and the bank is the shot's alone either way."""
    rng = np.random.default_rng(2)
    shot, blue = coloured_part(rng, 0), coloured_part(rng, 110)
    alone = FewShotPatchCore(FewShotConfig(image_size=96))
    alone.fit([shot])
    told = FewShotPatchCore(FewShotConfig(image_size=96))
    report = told.fit([shot], colour_evidence=[blue])
    assert not alone.state.gray and told.state.gray
    assert report.n_images == 1 and told.state.n_shots == 1
    assert told.vector_count == alone.vector_count
    assert len({r.path for r in told.records}) == 1
    agreeing = FewShotPatchCore(FewShotConfig(image_size=96))
    agreeing.fit([shot], colour_evidence=[coloured_part(rng, 0)])  # another red one
    assert not agreeing.state.gray
    strict = FewShotPatchCore(FewShotConfig(image_size=96, colour="rgb"))
    strict.fit([shot], colour_evidence=[blue])  # the setting, when given, wins
    assert not strict.state.gray
