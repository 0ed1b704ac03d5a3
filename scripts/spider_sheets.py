"""Contact sheets of SPIDER's located discs, to check by eye what the grader learns from (SPIDER has no coordinates).

Each tile is the lower spine of one slice with the located chain: discs used for training in red, discs left out
(doubtful chain, `ai.training.joint.usable_discs`) in grey, L5-S1 in yellow, vertebrae in green; the tile's caption
is the patient and the landmark nets' agreement at L5-S1. Also prints the counts as JSON. The sheets are derived
from the data: write them outside the repository.

    .venv/bin/python scripts/spider_sheets.py --data ../shared/data/spider-t2 --out /tmp/sheets [--model default]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ai.infer import Analyzer  # noqa: E402
from ai.labels import LEVEL_INDEX  # noqa: E402
from ai.spider import load_spider  # noqa: E402
from ai.training.joint import prepare_spider  # noqa: E402

TILE, COLS, ROWS = 220, 8, 5


def tile(item) -> Image.Image:
    xy = item.xy
    step = float(np.median(np.linalg.norm(np.diff(xy, axis=0), axis=1)))
    centre, half = xy[LEVEL_INDEX["L4-L5"]], step * 4.5
    x0, y0 = int(centre[0] - half), int(centre[1] - half * 0.8)
    im = Image.fromarray((item.img01 * 255).astype(np.uint8)).crop((x0, y0, x0 + int(2 * half), y0 + int(2 * half)))
    scale = TILE / max(im.width, 1)
    im = im.resize((TILE, TILE)).convert("RGB")
    draw = ImageDraw.Draw(im)
    for i, (x, y) in enumerate(xy):
        x, y = (x - x0) * scale, (y - y0) * scale
        disc = i % 2 == 0
        colour = (
            (255, 220, 0)
            if i == LEVEL_INDEX["L5-S1"]
            else (((255, 60, 60) if item.use[i] else (150, 150, 150)) if disc else (60, 255, 60))
        )
        r = 4 if i == LEVEL_INDEX["L5-S1"] else 2
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    draw.text((3, 3), f"{item.study.patient} L5-S1 {item.agreement[LEVEL_INDEX['L5-S1']]:.1f}", fill=(0, 200, 255))
    return im


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="default", help="the locator (never a model trained on SPIDER)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = prepare_spider(load_spider(Path(args.data)), Analyzer.load(args.model, "cpu"))
    per = COLS * ROWS
    for s in range(0, len(items), per):
        sheet = Image.new("RGB", (COLS * TILE, ROWS * TILE))
        for j, item in enumerate(items[s : s + per]):
            sheet.paste(tile(item), ((j % COLS) * TILE, (j // COLS) * TILE))
        sheet.save(out / f"sheet{s // per + 1}.png")
    graded = sum(len(it.study.discs) for it in items)
    print(
        json.dumps(
            {
                "slices": len(items),
                "slices_used": int(sum(it.use.any() for it in items)),
                "discs_graded": graded,
                "discs_used": int(sum(it.use.sum() for it in items)),
                "sheets": sorted(str(f) for f in out.glob("sheet*.png")),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
