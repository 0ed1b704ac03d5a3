"""Receive throughput: the same N files sent with storescu to the node and to DCMTK storescp, in one run, same
PDU size, TCP_NODELAY=1 for the DCMTK tools, durability (fsync) on as shipped. Prints JSON.

    .venv/bin/python benchmarks/receive.py [--n 500] [--sizes 256 512]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from dicomgen import SeriesSpec, write_series  # noqa: E402
from peers import DCMTK_ENV, NodeProcess, free_port, write_config  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

PDU = 131072


def send(port: int, folder: Path, n: int) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(
        [
            "storescu",
            "-v",
            "-aec",
            "DICOMNODE",
            "--max-pdu",
            str(PDU),
            "+sd",
            "+r",
            "127.0.0.1",
            str(port),
            str(folder),
        ],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=1800,
    )
    dt = time.perf_counter() - t0
    ok = (r.stdout + r.stderr).count("Received Store Response (Success)")
    if ok != n:
        raise RuntimeError(f"only {ok}/{n} stored: {(r.stdout + r.stderr)[-2000:]}")
    return n / dt


def bench_storescp(folder: Path, n: int, work: Path) -> float:
    out = work / "storescp"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        ["storescp", "--max-pdu", str(PDU), "-od", str(out), "-aet", "DICOMNODE", str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        return send(port, folder, n)
    finally:
        proc.terminate()
        proc.wait(10)


def bench_node(folder: Path, n: int, work: Path) -> float:
    port = free_port()
    cfg = write_config(work / "node.toml", work / "node", port, node={"max_pdu_size": PDU, "fsync": True})
    node = NodeProcess(cfg, work / "node.log").start()
    try:
        return send(port, folder, n)
    finally:
        node.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs; medians are reported (disk speed varies)")
    args = ap.parse_args()
    result: dict[str, object] = {"n": args.n, "pdu": PDU, "fsync": True, "cores": os.cpu_count()}
    for size in args.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"bench{size}-"))
        try:
            src = work / "src"
            write_series(src, SeriesSpec(slices=args.n, rows=size, cols=size), generate_uid())
            scps, nodes = [], []
            for i in range(args.repeat):
                run_dir = work / f"run{i}"
                run_dir.mkdir()
                scps.append(bench_storescp(src, args.n, run_dir))
                nodes.append(bench_node(src, args.n, run_dir))
                shutil.rmtree(run_dir, ignore_errors=True)
            scp, node = statistics.median(scps), statistics.median(nodes)
            result[str(size)] = {
                "storescp_img_s": round(scp, 1),
                "dicomnode_img_s": round(node, 1),
                "ratio": round(node / scp, 3),
                "ratios_per_run": [round(b / a, 3) for a, b in zip(scps, nodes, strict=True)],
            }
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
