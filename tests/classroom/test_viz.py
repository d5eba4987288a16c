"""The offline slider of odistill.classroom.viz: one stored figure per setting, the initial one visible."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from odistill.classroom.viz import precomputed_slider  # noqa: E402


def _draw(calls):
    def draw(b):
        calls.append(b)
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1], [0, b])
        plt.show()

    return draw


def test_every_setting_is_drawn_once_and_the_initial_one_is_shown():
    calls = []
    show = plt.show
    html = precomputed_slider(_draw(calls), [0, 0.5, 1.0], value=0.5, fmt="{:g}", alt="line at").data
    assert calls == [0, 0.5, 1.0] and plt.show is show  # plt.show is restored
    assert not plt.get_fignums()  # no figure left open for the inline backend to show twice
    images = re.findall(r"<img ([^>]*)>", html)
    assert len(images) == 3 and all('src="data:image/png;base64,' in im for im in images)
    assert ["display:none" in im for im in images] == [True, False, True]
    assert re.findall(r'alt="([^"]*)"', html) == ["line at β = 0", "line at β = 0.5", "line at β = 1"]
    assert 'value="1"' in html and "<output>0.5</output>" in html


def test_a_value_that_was_not_precomputed_is_a_clear_error():
    with pytest.raises(ValueError, match="not one of the precomputed values"):
        precomputed_slider(_draw([]), [0, 1], value=0.5)
    with pytest.raises(ValueError, match="at least one value"):
        precomputed_slider(_draw([]), [])
