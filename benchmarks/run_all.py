"""Run every benchmark script in this folder, one after the other (`make bench`).

Each ``bench_*.py`` prints ratios measured side by side in one run; flags given here (e.g. ``--quick``)
are passed to all of them. Benchmarks run sequentially so that they do not compete for cores.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    scripts = sorted(Path(__file__).parent.glob("bench_*.py"))
    failed = []
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        if subprocess.call([sys.executable, str(script), *argv]) != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
