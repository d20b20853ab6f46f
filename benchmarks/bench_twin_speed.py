#!/usr/bin/env python
"""Benchmark of the twin's generation speed: one scan of a preset, this code against an older copy.

Runs ``generate.run_scan`` for each given scan (scanner, repetition; every dose and reconstruction the
preset has) in a fresh process, once with this checkout's ``ctdose`` and, with ``--old-src``, once with
an older copy of the package (e.g. ``git archive HEAD ctdose | tar -x -C /tmp/old``), alternating
old / new ``--rounds`` times so that both see the same load. Prints the CPU and wall seconds of each
run, the old / new ratio of the best runs, and whether the written files (CT slices, SEG, scan record)
are byte-identical. Without ``--old-src`` only this code is timed. ``--quick``: the tiny preset.

Example:
  .venv/bin/python benchmarks/bench_twin_speed.py --old-src /tmp/old --scans A1:0 E2:0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# --- settings ---------------------------------------------------------------------------------
PRESET = "demo"  # --quick: tiny
SCANS = ("A1:0",)  # scanner:repetition
ROUNDS = 1
# -----------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from ctdose.twin.generate import ScanJob, run_scan
from ctdose.twin.presets import get_preset
torch.set_num_threads(1)
job = ScanJob(sys.argv[2], get_preset(sys.argv[3]), sys.argv[4], int(sys.argv[5]), 0, 0)
start, cpu = time.perf_counter(), time.process_time()
run_scan(job)
print(json.dumps({"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu}))
"""


def run_once(src: Path, out: Path, preset: str, scanner: str, rep: int) -> dict[str, float]:
    """Time one scan in a fresh process importing ``ctdose`` from ``src`` (single-threaded)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(src)}
    result = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), preset, scanner, str(rep)],
                            env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> hex), scratch files left out."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "calibration_" not in p.name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-src", type=Path, help="folder holding an older ctdose package to compare with")
    parser.add_argument("--preset", default=PRESET, help="preset (default %(default)s)")
    parser.add_argument("--scans", nargs="+", default=list(SCANS), help="scanner:repetition (default A1:0)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="alternating runs of each (default 1)")
    parser.add_argument("--quick", action="store_true", help="the tiny preset")
    args = parser.parse_args()
    preset = "tiny" if args.quick else args.preset
    work = Path(tempfile.mkdtemp(prefix="bench_twin_speed_"))
    try:
        for scan in args.scans:
            scanner, rep = scan.split(":")
            times: dict[str, list[dict[str, float]]] = {"new": [], "old": []}
            for _ in range(args.rounds):
                for label, src in (("old", args.old_src), ("new", ROOT)):
                    if src is not None:
                        times[label].append(run_once(src.resolve(), work / label, preset, scanner, int(rep)))
            new = min(t["cpu"] for t in times["new"])
            line = (f"{preset} {scanner} rep {rep}: new cpu {new:.1f} s (wall "
                    f"{min(t['wall'] for t in times['new']):.1f} s)")
            if times["old"]:
                old = min(t["cpu"] for t in times["old"])
                same = digests(work / "old") == digests(work / "new")
                line += (f", old cpu {old:.1f} s (wall {min(t['wall'] for t in times['old']):.1f} s), "
                         f"old/new {old / new:.2f}x, files byte-identical: {same}")
            print(line, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
