#!/usr/bin/env python
"""Train and evaluate a series classifier (imaging axis, IV contrast or body part) on a labelled list.

The list is a CSV with one row per CT series: path (folder), label, group (patient or phantom
acquisition; a group never straddles train / validation / test) and optionally task (rows of other
tasks are left out) and origin. Each series is read, clipped to [-1000, 1000] HU, scaled to [-1, 1]
and pooled to a --cube^3 array in its stored voxel order; a MONAI 3-D ResNet (resnet10 / resnet18,
1 channel) is trained with Adam for --epochs on 70 % of the groups, the epoch with the best validation
accuracy (20 % of the groups) is kept and evaluated once on the last 10 % (split seeded by --seed;
ctdose/stats/series_classifier.py). Accuracy comes with its 95 % Wilson score interval. Deterministic
on the CPU. Writes into --out (default <results>/analysis/series_classifier/<task>/):
  accuracy.csv (+ .json sidecar: the record: data, classes, split sizes, epochs, losses, best epoch,
  accuracy + CI per split, twin_trained), record.json (the same record), predictions.csv (every series:
  label, group, split, predicted), history.csv (loss and validation accuracy per epoch),
  confusion.csv and confusion.png/.pdf (test series), model.pt (state dict of the kept epoch).
A list whose rows all say origin 'ctdose twin ...' (data/make_qc_twin.py) is recorded and titled
twin-trained: such a model has seen the phantom, never real anatomy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from ctdose.atomic import atomic_path, write_csv, write_json
from ctdose.cli import run_main
from ctdose.layout import ResultsLayout, repo_path
from ctdose.parallel import parallel_map
from ctdose.plots import figure_files
from ctdose.provenance import is_current, write_sidecar
from ctdose.stats.series_classifier import (SPLITS, ClassifierSettings, confusion_figure, load_cube,
                                            read_labelled_list, train_series_classifier)

# --- settings ---
LIST = "data/twin_qc/qc_axis.csv"   # labelled list (path, label, group[, task, origin])
TASK = "axis"                       # axis | contrast | body_part
RESULTS = "results"                 # default --out: <results>/analysis/series_classifier/<task>
ARCH = "resnet10"                   # resnet10 | resnet18
CUBE = 32                           # input voxels per side
WIDEN = 1.0                         # ResNet channel width factor
EPOCHS = 20
BATCH = 8
LR = 1e-3
SEED = 0
WORKERS = 1                         # processes reading the series
# --- end settings ---

TASKS = ("axis", "contrast", "body_part")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", default=str(repo_path(LIST)), help="labelled list CSV (default: %(default)s)")
    p.add_argument("--task", default=TASK, choices=TASKS, help="the task (default: %(default)s)")
    p.add_argument("--results", default=str(repo_path(RESULTS)), help="results folder (default: %(default)s)")
    p.add_argument("--out", help="output folder (default: <results>/analysis/series_classifier/<task>)")
    p.add_argument("--arch", default=ARCH, choices=("resnet10", "resnet18"), help="network (default: %(default)s)")
    p.add_argument("--cube", type=int, default=CUBE, help="input voxels per side (default: %(default)s)")
    p.add_argument("--widen", type=float, default=WIDEN, help="ResNet width factor (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help="training epochs (default: %(default)s)")
    p.add_argument("--batch", type=int, default=BATCH, help="batch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=LR, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=SEED, help="split and training seed (default: %(default)s)")
    p.add_argument("--workers", type=int, default=WORKERS, help="processes reading series (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="retrain even if the outputs are up to date")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out) if args.out else ResultsLayout(args.results).series_classifier(args.task)
    settings = ClassifierSettings(arch=args.arch, cube=args.cube, widen=args.widen, epochs=args.epochs,
                                  batch_size=args.batch, lr=args.lr, seed=args.seed)
    record_settings = {**settings.as_dict(), "task": args.task}
    accuracy_path = out / "accuracy.csv"
    outputs = [out / n for n in ("predictions.csv", "history.csv", "confusion.csv", "model.pt")]
    outputs += figure_files(out / "confusion")
    if not args.force and is_current(accuracy_path, record_settings, [args.list], outputs):
        print(f"series classifier up to date: {accuracy_path}")
        return 0
    table = read_labelled_list(args.list)
    if "task" in table.columns and (table["task"] != "").any():
        table = table[table["task"] == args.task].reset_index(drop=True)
        if table.empty:
            raise ValueError(f"labelled list {args.list} has no rows of task {args.task}")
    import functools

    import numpy as np
    import torch

    cubes = np.stack(parallel_map(functools.partial(load_cube, cube=args.cube), list(table["path"]),
                                  workers=args.workers, desc=f"reading {args.task} series"))
    result = train_series_classifier(cubes, table["label"], table["group"], settings, progress=True)
    twin = "origin" in table.columns and table["origin"].str.startswith("ctdose twin").all()
    out.mkdir(parents=True, exist_ok=True)
    predictions = table.assign(split=result.split, predicted=result.predictions)
    write_csv(predictions, out / "predictions.csv")
    write_csv(result.history, out / "history.csv")
    write_csv(result.confusion.reset_index(), out / "confusion.csv")
    with atomic_path(out / "model.pt") as tmp:
        torch.save(result.state_dict, tmp)
    title = f"{args.task}: test series ({'twin-trained' if twin else 'trained on the list'})"
    confusion_figure(result.confusion, title, out / "confusion")
    accuracy = pd.DataFrame([{"split": s, **result.accuracy[s]} for s in SPLITS])
    write_csv(accuracy, accuracy_path)
    record = {
        "task": args.task, "list": str(args.list), "twin_trained": bool(twin),
        "trained_on": ("ctdose digital twin series (twin-trained: phantom, not real anatomy)" if twin
                       else "the labelled list's series"),
        "classes": result.classes, "n_series": int(len(table)), "n_groups": int(table["group"].nunique()),
        "split_series": {s: int((result.split == s).sum()) for s in SPLITS},
        "split_groups": {s: int(table.loc[result.split == s, "group"].nunique()) for s in SPLITS},
        "epochs": settings.epochs, "best_epoch": result.best_epoch,
        "final_train_loss": float(result.history["train_loss"].iloc[-1]),
        "best_val_loss": float(result.history.loc[result.history["epoch"] == result.best_epoch, "val_loss"].iloc[0]),
        "accuracy": result.accuracy, "ci_method": "Wilson score interval, 95 %",
        "confusion_test": result.confusion.to_dict(orient="index"), "settings": record_settings,
    }
    write_json(record, out / "record.json")
    write_sidecar(accuracy_path, record_settings, inputs=[args.list], outputs=outputs, record=record)
    test = result.accuracy["test"]
    print(f"{args.task}: test accuracy {test['accuracy']:.3f} (95 % Wilson CI {test['ci_low']:.3f}-{test['ci_high']:.3f}, "
          f"n = {test['n']}), best epoch {result.best_epoch}/{settings.epochs}"
          f"{' (twin-trained)' if twin else ''} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
