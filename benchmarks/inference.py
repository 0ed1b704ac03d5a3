"""CPU time and peak memory per study for the shipped model (JSON). Uses the annotated slices in ../shared when
present, else synthetic slices. `wall_s_per_study_*`: one slice analysed; `node_wall_s_per_study_*`: as the node
does it for a series, the default number of candidate slices (3) located and the best one graded (train150 has one
slice per study, so its slice stands in for all three).

    .venv/bin/python benchmarks/inference.py [--model default] [--n 20] [--threads 2] [--unfused] [--fp32-graders]

`pipeline_wall_s_per_study_*`: the node's whole path for a study of five single-frame slice files (series selection
from the headers, reading, turning each slice to the nets' orientation, locating the candidates, grading the best):
`dicomnode.analyse.analyse`.

--unfused: the networks as trained (BatchNorm not folded, graders fp32), the baseline for `ai.infer.for_inference`;
--fp32-graders: folded, but the graders in fp32 instead of int8 (`ai.training.quantize`).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from ai.infer import Analyzer  # noqa: E402
from dicomnode.config import AIConfig  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "tianchi-spark-train150"


def slices(n: int) -> list[tuple[np.ndarray, tuple[float, float]]]:
    if SHARED.is_dir():
        from ai.data import load_dataset

        return [s.load() for s in load_dataset(SHARED)[:n]]
    from dicomgen import phantom

    return [(phantom(512, 512, i).astype(np.float32), (0.7, 0.7)) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--unfused", action="store_true", help="load the networks without for_inference")
    ap.add_argument("--fp32-graders", action="store_true", help="graders in fp32 instead of int8")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    analyzer = Analyzer.load(args.model, "cpu", fused=not args.unfused, int8=not args.fp32_graders)
    load_s = time.perf_counter() - t0
    data = slices(args.n)
    analyzer.analyze(*data[0])  # warm-up
    wall, cpu = [], []
    for pixels, spacing in data:
        w, c = time.perf_counter(), time.process_time()
        analyzer.analyze(pixels, spacing)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    node = []
    for pixels, _ in data:
        w = time.perf_counter()
        found = analyzer.locate_slices([pixels] * AIConfig.candidate_slices)
        analyzer.grade_slice(max(found, key=lambda f: f.score))
        node.append(time.perf_counter() - w)
    pipeline = pipeline_times(analyzer, data)
    print(
        json.dumps(
            {
                "model_version": analyzer.version,
                "studies": len(data),
                "threads": args.threads,
                "fused": not args.unfused,
                "int8_graders": analyzer.int8_graders,
                "source": "train150" if SHARED.is_dir() else "synthetic",
                "model_load_s": round(load_s, 3),
                "wall_s_per_study_mean": round(float(np.mean(wall)), 4),
                "wall_s_per_study_p95": round(float(np.percentile(wall, 95)), 4),
                "cpu_s_per_study_mean": round(float(np.mean(cpu)), 4),
                "node_wall_s_per_study_mean": round(float(np.mean(node)), 4),
                "node_wall_s_per_study_p95": round(float(np.percentile(node, 95)), 4),
                "pipeline_wall_s_per_study_mean": round(float(np.mean(pipeline)), 4),
                "pipeline_wall_s_per_study_p95": round(float(np.percentile(pipeline, 95)), 4),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


def pipeline_times(analyzer: Analyzer, data: list[tuple[np.ndarray, tuple[float, float]]]) -> list[float]:
    """Seconds per study through `dicomnode.analyse.analyse`, each study five files of one slice's pixels."""
    import tempfile

    from dicomgen import SeriesSpec, make_instance
    from pydicom.uid import generate_uid

    from dicomnode.analyse import analyse

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (pixels, spacing) in enumerate(data):
            spec = SeriesSpec("T2_TSE_SAG", slices=5, rows=pixels.shape[0], cols=pixels.shape[1], pixel_spacing=spacing)
            study, series, paths = generate_uid(), generate_uid(), []
            for i in range(spec.slices):
                path = Path(tmp) / f"{k}_{i}.dcm"
                make_instance(spec, study, series, i, pixels=pixels.astype(np.uint16)).save_as(path)
                paths.append(path)
            w = time.perf_counter()
            analyse(paths, analyzer, AIConfig.candidate_slices)
            out.append(time.perf_counter() - w)
    return out


if __name__ == "__main__":
    main()
