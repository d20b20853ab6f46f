"""IBSI compliance of PyRadiomics -> docs/ibsi_compliance.md (Markdown) and an optional CSV.

Runs PyRadiomics on the IBSI chapter 1 digital phantom (no discretisation: bin width 1) and on the
IBSI CT phantom under the IBSI configurations PyRadiomics can be set up for (A-D; E needs two
re-segmentation modes at once), compares each of the 102 PyRadiomics features that have an IBSI
counterpart with IBSI's reference value, and classes it: agrees / known PyRadiomics deviation (with
the reason) / differs. tests/test_ibsi.py checks that the committed document is current. The logic
lives in ctdose/ibsi.py. About 10 s on 2 cores.

Example: .venv/bin/python radiomics/ibsi_compliance.py
"""

from __future__ import annotations

import argparse
import sys

from ctdose import ibsi
from ctdose.atomic import write_csv, write_text
from ctdose.cli import run_main
from ctdose.layout import repo_path

# --- settings ---
REALDATA = str(repo_path("../shared/realdata"))  # IBSI phantoms and reference values
OUT = str(repo_path("docs/ibsi_compliance.md"))
CONFIGURATIONS = tuple(ibsi.CONFIGURATIONS)  # dig. phantom, config. A .. config. D
# --- end settings ---


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--realdata", default=REALDATA,
                        help="folder with ibsi1_digital_phantom/, ibsi1_ct_phantom/ and "
                             "ibsi1_reference_values.json (default: %(default)s)")
    parser.add_argument("--out", default=OUT, help="Markdown table to write (default: %(default)s)")
    parser.add_argument("--csv", help="also write the full table (values, references, margins) as CSV")
    parser.add_argument("--configurations", nargs="+", default=list(CONFIGURATIONS), metavar="NAME",
                        help=f"IBSI configurations to run (default: {', '.join(CONFIGURATIONS)})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    realdata = repo_path(args.realdata)
    needs_ct = any(ibsi.CONFIGURATIONS.get(c) and ibsi.CONFIGURATIONS[c].phantom == "ct"
                   for c in args.configurations)
    table = ibsi.compliance_table(realdata / "ibsi1_digital_phantom",
                                  realdata / "ibsi1_ct_phantom" if needs_ct else None,
                                  realdata / "ibsi1_reference_values.json", tuple(args.configurations))
    out = write_text(ibsi.markdown(table), repo_path(args.out))
    if args.csv:
        write_csv(table, repo_path(args.csv), index=False)
    print(ibsi.summary(table).to_string(index=False))
    print(f"table: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
