"""Preview pictures cut through the anatomy's centre, or through the lesion when asked."""

from __future__ import annotations

import numpy as np

from guidegen.io.preview import _centre, render_preview
from guidegen.io.volume import Volume


def test_slices_go_through_the_largest_lesion_when_focused(tmp_path):
    array = np.zeros((20, 20, 20), np.uint8)
    array[2:18, 2:18, 2:18] = 1  # an organ filling the volume: its centre is (9.5, 9.5, 9.5)
    array[3:5, 3:5, 3:5] = 7  # a small lesion …
    array[12:16, 13:17, 4:8] = 7  # … and the largest one, centred at (13.5, 14.5, 5.5)
    labels = Volume(array, np.eye(4), "labels")
    assert _centre(labels, array.shape, (0,)) == (10, 10, 10)
    assert _centre(labels, array.shape, (0,), focus=(7,)) == (14, 14, 6)
    assert _centre(labels, array.shape, (0,), focus=(9, 7)) == (14, 14, 6)  # the first class present
    assert _centre(labels, array.shape, (0,), focus=(9,)) == (10, 10, 10)  # none present: the centre
    out = render_preview(
        tmp_path / "p.png",
        None,
        labels,
        [str(i) for i in range(10)],
        [(i * 20, 0, 0) for i in range(10)],
        focus_classes=(7,),
    )
    assert out.stat().st_size > 0
