"""Concurrent load: K storescu associations at once, N instances each (one study per sender, its sagittal T2
series analysed by the real model while the others still arrive). Checks that nothing is lost and reports
throughput and the node's peak memory. Prints JSON.

    .venv/bin/python benchmarks/load.py [--senders 8] [--n 500] [--size 256] [--fp32-graders]

--compare: receiving only, the same files in one run, K concurrent associations into DCMTK storescp, Orthanc (its
index and storage synced, as shipped), and the node as a receiver with 1 and with 2 receiver processes
(`[node] receivers`, SO_REUSEPORT), fsync on, and pynetdicom set up as the node sets it up, keeping nothing or only
writing the files (`bare_scp.py`, the floors of the node's receive path); --repeat alternating rounds, medians
reported. It also reports the CPU time each receiver (its whole process tree) and the senders spend per instance:
where senders and receiver share the cores, `cores / (receiver + senders)` bounds the rate whatever the scheduling.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from dicomgen import SeriesSpec, write_series  # noqa: E402
from peers import DCMTK_ENV, NodeProcess, Orthanc, free_port, write_config  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402


def make_study(folder: Path, n: int, size: int) -> None:
    """A sagittal T2 series of 15 slices plus axial slices up to n instances."""
    study = generate_uid()
    write_series(folder, SeriesSpec(slices=15, rows=size, cols=size, series_number=1), study)
    write_series(
        folder,
        SeriesSpec(description="T2_TSE_TRA", plane="ax", slices=n - 15, rows=size, cols=size, series_number=2),
        study,
    )


def send_all(port: int, folders: list[Path], aec: str = "DICOMNODE") -> tuple[int, float]:
    """K storescu processes at once, one folder each: (instances acknowledged, seconds)."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-v", "-aec", aec, "--max-pdu", "131072", "+sd", "+r", "127.0.0.1", str(port), str(f)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=DCMTK_ENV,
        )
        for f in folders
    ]
    acked = sum(p.communicate(timeout=3600)[0].count("Received Store Response (Success)") for p in procs)
    return acked, time.perf_counter() - t0


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live descendants (threads included), from /proc."""
    procs: dict[int, tuple[int, int]] = {}  # pid: (parent, utime + stime ticks)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            procs[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, grew = {pid}, True
    while grew:
        more = {p for p, (parent, _) in procs.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(procs[p][1] for p in tree if p in procs) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def compare(folders: list[Path], work: Path, repeat: int) -> dict[str, object]:
    total = sum(1 for f in folders for _ in f.rglob("*.dcm"))
    names = (
        "storescp",
        "orthanc",
        "pynetdicom_keeping_nothing",
        "pynetdicom_writing_files",
        "node_1_receiver",
        "node_2_receivers",
    )
    rates: dict[str, list[float]] = {k: [] for k in names}
    receiver_ms: dict[str, list[float]] = {k: [] for k in names}
    sender_ms: dict[str, list[float]] = {k: [] for k in names}

    def timed(name: str, port: int, pid: int, aec: str = "DICOMNODE") -> None:
        cpu0, senders0 = tree_cpu_seconds(pid), children_cpu_seconds()
        acked, seconds = send_all(port, folders, aec)
        cpu1, senders1 = tree_cpu_seconds(pid), children_cpu_seconds()
        if acked != total:
            raise RuntimeError(f"{name}: {acked} of {total} acknowledged")
        rates[name].append(acked / seconds)
        receiver_ms[name].append(1000 * (cpu1 - cpu0) / acked)
        sender_ms[name].append(1000 * (senders1 - senders0) / acked)

    for r in range(repeat):
        run = work / f"round{r}"
        port = free_port()
        (run / "storescp").mkdir(parents=True)
        scp = subprocess.Popen(
            ["storescp", "--max-pdu", "131072", "-od", str(run / "storescp"), "-aet", "DICOMNODE", str(port)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            timed("storescp", port, scp.pid)
        finally:
            scp.terminate()
            scp.wait(10)
        pacs = Orthanc(run / "orthanc").start()
        try:
            assert pacs.proc is not None
            timed("orthanc", pacs.dicom, pacs.proc.pid, pacs.aet)
        finally:
            pacs.stop()
        for name, keep in (("pynetdicom_keeping_nothing", []), ("pynetdicom_writing_files", [str(run / "bare")])):
            port = free_port()
            bare = subprocess.Popen(
                [sys.executable, str(ROOT / "benchmarks" / "bare_scp.py"), str(port), *keep],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert bare.stdout is not None and bare.stdout.readline().strip() == "ready"
                timed(name, port, bare.pid)
            finally:
                bare.kill()
                bare.wait(10)
        for receivers, name in ((1, "node_1_receiver"), (2, "node_2_receivers")):
            port = free_port()
            node_cfg = {"role": "receiver", "receivers": receivers, "fsync": True, "max_associations": len(folders) + 4}
            cfg = write_config(run / f"{name}.toml", run / name, port, node=node_cfg)
            node = NodeProcess(cfg, run / f"{name}.log").start()
            try:
                time.sleep(1.0 if receivers > 1 else 0)  # the second receiver process starts after the first
                timed(name, port, node.pid)
            finally:
                node.stop()
        shutil.rmtree(run, ignore_errors=True)
    med = {k: round(statistics.median(v), 1) for k, v in rates.items()}
    recv = {k: round(statistics.median(v), 2) for k, v in receiver_ms.items()}
    send = {k: round(statistics.median(v), 2) for k, v in sender_ms.items()}
    cores = len(os.sched_getaffinity(0))
    return {
        "senders": len(folders),
        "instances": total,
        "fsync": True,
        "img_s_median": med,
        "img_s_per_round": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "node_2_receivers_vs_orthanc": round(med["node_2_receivers"] / med["orthanc"], 2),
        "pynetdicom_keeping_nothing_vs_orthanc": round(med["pynetdicom_keeping_nothing"] / med["orthanc"], 2),
        "cores": cores,
        "receiver_cpu_ms_per_instance": recv,
        "sender_cpu_ms_per_instance": send,
        "img_s_cpu_bound": {k: round(1000 * cores / (recv[k] + send[k]), 1) for k in names},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--fp32-graders", action="store_true", help="the node grades in fp32 instead of int8")
    ap.add_argument("--compare", action="store_true", help="receive only: storescp, Orthanc, node x1 and x2")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.compare:
        work = Path(tempfile.mkdtemp(prefix="dicomnode-compare-"))
        try:
            folders = [work / "src" / f"s{k}" for k in range(args.senders)]
            for f in folders:
                write_series(f, SeriesSpec(slices=args.n, rows=args.size, cols=args.size), generate_uid())
            print(json.dumps(compare(folders, work, args.repeat), indent=2))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    work = Path(tempfile.mkdtemp(prefix="dicomnode-load-"))
    try:
        folders = []
        for k in range(args.senders):
            folders.append(work / f"study{k}")
            make_study(folders[-1], args.n, args.size)
        port = free_port()
        cfg = write_config(
            work / "node.toml",
            work / "node",
            port,
            node={"max_pdu_size": 131072, "fsync": True, "max_associations": args.senders + 4},
            scheduler={"study_quiet_seconds": 5, "series_quiet_seconds": 3, "max_wait_seconds": 600},
            ai={"int8_graders": not args.fp32_graders},
        )
        node = NodeProcess(cfg, work / "node.log").start()
        rss_samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                rss_samples.append(node.memory_bytes("VmRSS"))
                time.sleep(0.5)

        threading.Thread(target=sample, daemon=True).start()
        try:
            t0 = time.perf_counter()
            procs = [
                subprocess.Popen(
                    [
                        "storescu",
                        "-v",
                        "-aec",
                        "DICOMNODE",
                        "--max-pdu",
                        "131072",
                        "+sd",
                        "+r",
                        "127.0.0.1",
                        str(port),
                        str(f),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=DCMTK_ENV,
                )
                for f in folders
            ]
            acked = [p.communicate(timeout=3600)[0].count("Received Store Response (Success)") for p in procs]
            receive_s = time.perf_counter() - t0
            db = work / "node" / "dicomnode.db"
            deadline = time.time() + 900
            while time.time() < deadline:
                con = sqlite3.connect(db)
                states = dict(con.execute("select state, count(*) from jobs group by state").fetchall())
                con.close()
                if sum(states.values()) >= args.senders and set(states) <= {"done", "failed", "no_input", "superseded"}:
                    break
                time.sleep(1)
            all_done_s = time.perf_counter() - t0
            con = sqlite3.connect(db)
            indexed = con.execute("select count(*) from instances").fetchone()[0]
            con.close()
            files = sum(1 for _ in (work / "node" / "studies").rglob("*.dcm"))
            peak = node.memory_bytes("VmHWM")
        finally:
            stop.set()
            node.stop()
        total = args.senders * args.n
        print(
            json.dumps(
                {
                    "senders": args.senders,
                    "instances_per_sender": args.n,
                    "matrix": args.size,
                    "int8_graders": not args.fp32_graders,
                    "acknowledged": sum(acked),
                    "indexed": indexed,
                    "files": files,
                    "lost": total - min(indexed, files),
                    "receive_seconds": round(receive_s, 1),
                    "throughput_img_s": round(sum(acked) / receive_s, 1),
                    "all_jobs_final_seconds": round(all_done_s, 1),
                    "jobs": states,
                    "node_peak_rss_mb": round(peak / 2**20),
                    "node_rss_max_sampled_mb": round(max(rss_samples) / 2**20),
                    "node_rss_after_receive_mb": round(rss_samples[-1] / 2**20) if rss_samples else None,
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
