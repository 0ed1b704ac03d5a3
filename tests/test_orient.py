"""Slices in any in-plane orientation turned to the nets' one (anterior left, head up), and points turned back."""

from __future__ import annotations

import numpy as np
import pytest

from ai.orient import Canonical, OrientationError, canonical

PLAIN = (0, 1, 0, 0, 0, -1)
# stored pixels made from the canonical image, and the ImageOrientationPatient that describes them correctly
VARIANTS = {
    "plain": (lambda a: a, PLAIN),
    "anterior right": (lambda a: a[:, ::-1], (0, -1, 0, 0, 0, -1)),
    "head down": (lambda a: a[::-1, :], (0, 1, 0, 0, 0, 1)),
    "both flipped": (lambda a: a[::-1, ::-1], (0, -1, 0, 0, 0, 1)),
    "transposed": (lambda a: a.T, (0, 0, -1, 0, 1, 0)),
    "transposed, flipped": (lambda a: a.T[::-1, :], (0, 0, -1, 0, -1, 0)),
    "oblique 20 degrees": (lambda a: a, (0, np.cos(0.35), -np.sin(0.35), 0, -np.sin(0.35), -np.cos(0.35))),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_turns_back_to_the_canonical_image_and_points_map_back(name: str):
    rng = np.random.default_rng(0)
    canon = rng.random((40, 30))
    make, iop = VARIANTS[name]
    stored = make(canon)
    c = canonical(iop)
    assert np.array_equal(c.image(stored), canon)
    # a point on the canonical image lands on the stored pixel with the same value, and back again
    pts = np.array([[3.0, 7.0], [29.0, 0.0], [12.0, 39.0]])
    back = c.to_stored(pts, stored.shape)
    for (x, y), (sx, sy) in zip(pts, back, strict=True):
        assert stored[int(sy), int(sx)] == canon[int(y), int(x)]
    assert np.allclose(c.to_canonical(back, stored.shape), pts)
    assert c.identity == (name in ("plain", "oblique 20 degrees"))


@pytest.mark.parametrize(
    "iop, why",
    [
        ((1, 0, 0, 0, 1, 0), "not a sagittal"),  # axial
        ((1, 0, 0, 0, 0, -1), "not a sagittal"),  # coronal
        ((0, 0.7071, 0.7071, 0, -0.7071, 0.7071), "leans to no patient axis"),  # 45 degrees: which way is up?
        (None, "not six numbers"),
        ((0, 1, 0), "not six numbers"),
        ((0, 0, 0, 0, 0, -1), "zero direction"),
    ],
)
def test_an_orientation_that_cannot_be_named_is_an_error_with_a_reason(iop, why):
    with pytest.raises(OrientationError, match=why):
        canonical(iop)


def test_describe_says_what_was_done():
    assert Canonical().describe() == "as stored"
    assert canonical((0, 0, -1, 0, -1, 0)).describe() == "transposed, columns flipped"
