#!/usr/bin/env python
"""Calibrate the twin's own scanner choices against the dataset paper's Table 6 and Tables 3-5.

Fits, per scanner, the FBP noise at 10 mGy, the electronic noise and the IR / DL edge gain to Table 6
(RMSE of each dose vs 14 mGy), and the CT-number offset, contrast scale and shading amplitude to Tables 3-5 (RMSE of every scanner pair at
10 mGy after a 4x bin-shrink); see ctdose/twin/calibration.py for the models. Prints every fitted
cell beside the published one (Table 6: within mean +- 2 sd or +-15 %; Tables 3-5: Spearman rho of
the off-diagonal pairs) and, unless --dry-run, writes the fitted values into the twin's choices
(ctdose/data/twin_scanner_choices.csv; kernels, windows and IR strengths are kept).
A developer's tool: the twin reads the choices file, so re-run it only to change the calibration.

Example:
  .venv/bin/python data/calibrate_twin.py --scanners A1 D1 --dry-run
"""

from __future__ import annotations

import argparse
import sys

# --- settings ---------------------------------------------------------------------------------
PRESET = "demo"  # grid of the calibration (the demo's region, pixels and slices)
SEED = 0  # noise of the calibration runs
SCANNERS: list[str] = []  # [] = all 13
# -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=PRESET, help="grid of the calibration (default %(default)s)")
    parser.add_argument("--scanners", nargs="+", default=SCANNERS, help="scanner codes (default: all)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the noise (default %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="print the fit, do not write the choices file")
    parser.add_argument("--skip-noise", action="store_true",
                        help="keep the noise choices; fit only the CT numbers (offset, scale, shading)")
    args = parser.parse_args(argv)

    import numpy as np
    import pandas as pd
    from tqdm.auto import tqdm

    from ctdose import published
    from ctdose.atomic import write_csv
    from ctdose.twin import calibration
    from ctdose.twin.presets import get_preset
    from ctdose.twin.scanners import CHOICES_CSV, SCANNERS as PROFILES, choices_path, get_scanner

    preset = get_preset(args.preset)
    codes = [get_scanner(c).code for c in args.scanners] or list(PROFILES)
    table6 = published.read_table6()
    fitted, rows = {}, []
    for code in tqdm([] if args.skip_noise else codes, desc="noise fit", unit="scanner"):
        cells = table6[table6["scanner"] == code]
        doses = cells["dose_mgy"].astype(float)
        targets = dict(zip(doses, cells["rmse_mean"].astype(float)))
        tolerances = dict(zip(doses, published.tolerance(cells["rmse_mean"], cells["rmse_sd"])))
        spreads = dict(zip(doses, cells["rmse_sd"].astype(float)))
        fitted[code], simulated = calibration.fit_noise(get_scanner(code), targets, preset, args.seed, tolerances,
                                                        spreads)
        rows += [{"scanner": code, "recon": "any", "dose_mgy": d, "rmse_hu_mean": v, "rmse_hu_sd": 0.0,
                  "psnr_db_mean": 20 * np.log10(2000.0 / v), "psnr_db_sd": 0.0, "ssim_mean": np.nan,
                  "ssim_sd": np.nan, "n": 1} for d, v in simulated.items()]
    pd.set_option("display.width", 160)
    if rows:
        compared = published.compare_table6(pd.DataFrame(rows))
        compared = compared[(compared["metric"] != "ssim") & (compared["status"] == "compared")]
        print(compared[["scanner", "dose_mgy", "metric", "twin_mean", "paper_mean", "paper_sd", "within"]]
              .to_string(index=False, float_format="{:.2f}".format))
        print(f"Table 6 cells within the aim: {int(compared['within'].sum())} of {len(compared)}")
        print("fitted: " + ", ".join(f"{c} noise {p.noise_10mgy_hu:.2f} HU, electronic {p.electronic_noise_counts:.2f}, "
                                     f"edge gain {p.ir_edge_gain:.3f}, edge jitter {p.edge_jitter_mm:.3f} mm"
                                     for c, p in fitted.items()))

    all_codes = list(PROFILES)
    bins = calibration.twin_region_bins(preset, all_codes)
    numbers, pairs = calibration.fit_ct_numbers(published.read_scanner_pairs(), all_codes, bins)
    rho, p = published.spearman(pairs["twin_model"].to_numpy(), pairs["paper"].to_numpy())
    print(pairs.to_string(index=False, float_format="{:.1f}".format))
    print(f"Tables 3-5 model, off-diagonal RMSE: Spearman rho {rho:.3f} (p {p:.2g}, n {len(pairs)}); "
          "offset / scale / shading: " + ", ".join(f"{c} {o:+.1f} HU x{s:.3f} {sh:.1f} HU"
                                                   for c, (o, s, sh) in numbers.items()))

    if args.dry_run:
        return 0
    choices = pd.read_csv(choices_path(), dtype={"scanner": str}, keep_default_na=False).set_index("scanner")
    for code, profile in fitted.items():
        choices.loc[code, ["noise_10mgy_hu", "electronic_noise_counts", "ir_edge_gain", "edge_jitter_mm"]] = (
            profile.noise_10mgy_hu, profile.electronic_noise_counts, profile.ir_edge_gain, profile.edge_jitter_mm)
    for code, (offset, scale, shading) in numbers.items():
        choices.loc[code, ["hu_offset", "hu_scale", "shading_hu"]] = (offset, scale, shading)
    write_csv(choices.reset_index(), choices_path())
    print(f"wrote {CHOICES_CSV} ({choices_path()})")
    return 0


if __name__ == "__main__":
    from ctdose.cli import run_main

    sys.exit(run_main(main))
