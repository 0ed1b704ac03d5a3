"""Checks the 11 points as a chain: a landmark net that skips a vertebra leaves one step three times as long
as the others, and every level above the gap named two levels too high; an ensemble whose nets number the spine
differently can fold the chain back on itself (`repair_fold`).

Measured on the CV folds (model card): each landmark net left such a gap (a step 2.4 to 3.5 times the median)
in 7 to 15 of the 150 held-out studies; most other chains stay under 1.6. The threshold sits above 2.2, the
largest step in the annotations themselves (four studies where a disc and a vertebra label were swapped). The
part below the gap is kept: the nets place L5-S1, next to the sacrum, more reliably than the upper levels, and
keeping the top instead lowers the CV score.
"""

from __future__ import annotations

import numpy as np

SKIP_RATIO = 2.4  # a step this many times the median is a skipped vertebra (disc + body: two levels)
FOLD_STEPS = 0.8  # two points two levels apart closer than this many median steps: the chain folded back


def repair_skip(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points (11, 2) with one skipped vertebra put back, and per level the index of the input point it came
    from (-1: put in the gap by interpolation). Unchanged when no step is long enough."""
    xy = np.asarray(xy, np.float64)
    n = len(xy)
    source = np.arange(n)
    steps = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    ratio = steps / max(float(np.median(steps)), 1e-6)
    gap = int(ratio.argmax())
    if ratio[gap] < SKIP_RATIO:
        return xy, source
    a, b = xy[gap], xy[gap + 1]
    out = xy.copy()
    # Levels gap-1 and gap lie inside the gap; the points above it are renamed two levels lower down the
    # spine, and the two highest fall off the top of the chain.
    for k in range(gap + 1):
        if k <= gap - 2:
            out[k], source[k] = xy[k + 2], k + 2
        else:
            out[k], source[k] = a + (b - a) * (k - gap + 2) / 3, -1
    return out, source


def carry(values: np.ndarray, source: np.ndarray, inserted: float | None = None) -> np.ndarray:
    """Per-level values (first axis) moved with their points. A point put in a gap gets `inserted`, or, when
    that is None, keeps the value its level had before (an approximation for out-of-fold probabilities)."""
    values = np.asarray(values, np.float64)
    out = values.copy()
    for k, s in enumerate(source):
        if s >= 0:
            out[k] = values[s]
        elif inserted is not None:
            out[k] = inserted
    return out


def repair_fold(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points (11, 2) with a fold taken out: where the points k+2, k+3 lie back on k, k+1 (two levels on one disc
    and vertebra, as the median of landmark nets that number the spine differently can give), the lower copy keeps
    its names, the chain above it moves one level up, and the two top points are extrapolated (source -1). As in
    `repair_skip`, the part next to the sacrum is trusted. Unchanged when no two points fold.

    Measured (docs/experiments.md, 2026-12-07 b): on 325 LSMRI patients that neither 20261202's locators nor the rule's
    design saw, it fired on 98 slices and points within 0.175 steps went 0.880 -> 0.951; with the shipped locators on
    26 of SPIDER's 172 slices (abnormal-disc balanced accuracy, in-sample, 0.856 with the shipped graders; 0.843 for
    20261204, the same graders without it) and on none of Tianchi's 150."""
    xy = np.asarray(xy, np.float64)
    n = len(xy)
    source = np.arange(n)
    step = float(np.median(np.linalg.norm(np.diff(xy, axis=0), axis=1)))
    two_apart = np.linalg.norm(xy[2:] - xy[:-2], axis=1) / max(step, 1e-6)
    folded = np.flatnonzero(two_apart < FOLD_STEPS)
    if not len(folded) or n < 5:
        return xy, source
    k = int(folded.max())  # the lowest fold: xy[k + 2] lies on xy[k] ...
    while k - 1 in folded:  # ... and where k + 1 folds too, the pair starts at k - 1: the lower copy keeps its names
        k -= 1
    out = xy.copy()
    for j in range(k + 1, 1, -1):
        out[j], source[j] = xy[j - 2], j - 2
    up = out[2] - out[4]  # one level up the spine from the new third point
    out[1], out[0] = out[2] + up / 2, out[2] + up
    source[:2] = -1
    return out, source
