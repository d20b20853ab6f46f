#!/usr/bin/env python
"""Gather every analysis output into one self-contained HTML report and a Markdown twin.

Writes <results>/report.html (figures embedded as base64 PNG) and <results>/report.md, with sections:
findings first (per extractor: accuracy a dose change costs by dose ratio, ICC across doses and across
scanners, data source and weights status on one screen), the dataset paper's Table 7 layout (mean ICC
across scanners at 10 mGy, LOSO with 1 and S-1 training scanners, 10-fold), data used (twin or real,
series counts), feature tables and weights status (UNTRAINED weights shown
in a warning box), ICC, UMAP, classification, image metrics, provenance. Every file shown is first
checked against its producer's sidecar. A missing input does not stop the report: its section says
what is missing and which command makes it; a stale or damaged one is left out with a warning.
Prints the report path.
"""

from __future__ import annotations

import argparse
import sys

from ctdose.cli import run_main
from ctdose.layout import repo_path
from ctdose.report import write_report

# --- settings ---
RESULTS = "results"   # results folder to report on (relative to the repository)
TITLE = "CT dose impact on AI features: report"
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(repo_path(RESULTS)), help="results folder (default: %(default)s)")
    p.add_argument("--title", default=TITLE, help="report title")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    html_path, md_path = write_report(args.results, args.title)
    print(f"Markdown tables: {md_path}")
    print(f"report: {html_path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
