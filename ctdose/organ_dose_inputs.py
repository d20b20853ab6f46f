"""The per-slice, per-organ input table of an organ-dose regression model, and a slot for such a model.

A neighbouring dosimetry study predicts organ doses from, per axial slice and organ, the organ's mean and
standard deviation of HU, the tube current of the slice, the slice's water-equivalent diameter and its
position, with a trained regression model that is not public. This module builds that input table exactly,
from any label map on the series' grid (the toolkit's ROI masks, TotalSegmentator's organs ...), and loads
a user's own fitted model to apply to it. It ships no model and invents no organ doses.

Table columns (:data:`INPUT_COLUMNS`), one row per (slice, organ present on the slice):
``series_uid, slice_index, z_mm, organ, organ_label, n_voxels, hu_mean, hu_std, tube_current_ma, wed_cm``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

#: Columns of the input table, in order.
INPUT_COLUMNS: tuple[str, ...] = ("series_uid", "slice_index", "z_mm", "organ", "organ_label", "n_voxels",
                                  "hu_mean", "hu_std", "tube_current_ma", "wed_cm")
#: Numeric model inputs used, in this order, when a model does not name its own (``feature_names_in_``).
MODEL_FEATURES: tuple[str, ...] = ("hu_mean", "hu_std", "tube_current_ma", "wed_cm", "z_mm")
#: Column of the predictions.
PREDICTION_COLUMN = "organ_dose_mgy_predicted"
#: The one-line error when an organ-dose prediction is asked for without a model.
NO_MODEL_MESSAGE = ("no organ-dose model given: pass --organ-model FILE (a joblib or pickle file of a fitted "
                    "regressor with predict); the toolkit ships none and invents no organ doses")


def organ_slice_table(series_uid: str, volume_hu: np.ndarray, label_map: np.ndarray,
                      organ_names: Mapping[int, str], z_mm: np.ndarray,
                      tube_current_ma: np.ndarray | None = None, wed_cm: np.ndarray | None = None,
                      min_voxels: int = 1) -> pd.DataFrame:
    """One row per slice and organ present on it (at least ``min_voxels`` voxels).

    ``volume_hu`` and ``label_map``: (nz, ny, nx) on the same grid; ``organ_names``: {label: name} (labels
    absent from it are named ``label_<n>``); ``z_mm``, ``tube_current_ma``, ``wed_cm``: (nz,) per slice
    (NaN where not known). ``hu_std`` is the sample SD (ddof 1; NaN for a single voxel).
    """
    volume_hu = np.asarray(volume_hu)
    label_map = np.asarray(label_map)
    if label_map.shape != volume_hu.shape:
        raise ValueError(f"series {series_uid}: label map shape {label_map.shape} differs from the CT's "
                         f"{volume_hu.shape}")
    nz = volume_hu.shape[0]
    per_slice = {}
    for name, values in (("z_mm", z_mm), ("tube_current_ma", tube_current_ma), ("wed_cm", wed_cm)):
        array = np.full(nz, np.nan) if values is None else np.asarray(values, dtype=float).reshape(-1)
        if array.size != nz:
            raise ValueError(f"series {series_uid}: {array.size} values of {name} for {nz} slices")
        per_slice[name] = array
    rows = []
    flat_labels = label_map.reshape(nz, -1)
    flat_hu = volume_hu.reshape(nz, -1)
    for k in np.flatnonzero(flat_labels.any(axis=1)):
        lab = flat_labels[k].astype(np.int64)
        hu = flat_hu[k].astype(np.float64)
        counts = np.bincount(lab)  # per label on this slice: count, mean, sample SD (two passes)
        means = np.bincount(lab, weights=hu) / np.maximum(counts, 1)
        squares = np.bincount(lab, weights=(hu - means[lab]) ** 2)
        for label in np.flatnonzero(counts[1:] >= max(min_voxels, 1)) + 1:
            n = int(counts[label])
            rows.append((series_uid, int(k), per_slice["z_mm"][k], organ_names.get(int(label), f"label_{int(label)}"),
                         int(label), n, float(means[label]),
                         float(np.sqrt(squares[label] / (n - 1))) if n > 1 else float("nan"),
                         per_slice["tube_current_ma"][k], per_slice["wed_cm"][k]))
    return pd.DataFrame(rows, columns=list(INPUT_COLUMNS))


def load_organ_model(path: str | Path | None) -> Any:
    """A user's fitted regression model (joblib or pickle file of an object with ``predict``).

    ``None`` or "": ValueError(:data:`NO_MODEL_MESSAGE`); a missing file: FileNotFoundError; a file that
    is neither joblib nor pickle, or an object without ``predict``: ValueError naming the file.
    Only load model files you trust: unpickling runs code.
    """
    if path is None or str(path) == "":
        raise ValueError(NO_MODEL_MESSAGE)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"organ-dose model {path} not found")
    try:
        import joblib

        model = joblib.load(path)
    except Exception:  # noqa: BLE001 - not a joblib file: try plain pickle
        try:
            with path.open("rb") as handle:
                model = pickle.load(handle)
        except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad model file
            raise ValueError(f"organ-dose model {path}: not a joblib or pickle file ({type(err).__name__})") from None
    if not callable(getattr(model, "predict", None)):
        raise ValueError(f"organ-dose model {path}: a {type(model).__name__} has no predict method")
    return model


def model_features(model: Any) -> list[str]:
    """The input columns ``model`` expects: its ``feature_names_in_`` (a model fitted on a DataFrame),
    else :data:`MODEL_FEATURES`."""
    names = getattr(model, "feature_names_in_", None)
    return [str(n) for n in names] if names is not None else list(MODEL_FEATURES)


def predict_organ_doses(model: Any, table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with :data:`PREDICTION_COLUMN` = ``model.predict`` of the model's input columns.

    ValueError naming the missing columns, or the rows with NaN inputs (a model is never fed NaN).
    """
    if model is None:
        raise ValueError(NO_MODEL_MESSAGE)
    features = model_features(model)
    missing = [c for c in features if c not in table.columns]
    if missing:
        raise ValueError(f"organ-dose model needs column(s) {', '.join(missing)}, which the input table lacks "
                         f"(it has {', '.join(table.columns)})")
    inputs = table[features]
    numeric = inputs.select_dtypes(include="number")
    bad = numeric.isna().any(axis=1)
    if bad.any():
        first = table.loc[bad].iloc[0]
        raise ValueError(f"{int(bad.sum())} input row(s) have NaN model inputs (first: series "
                         f"{first.get('series_uid', '?')}, slice {first.get('slice_index', '?')}, organ "
                         f"{first.get('organ', '?')}); e.g. no tube current in the headers")
    use_frame = getattr(model, "feature_names_in_", None) is not None
    predicted = np.asarray(model.predict(inputs if use_frame else inputs.to_numpy(dtype=float)), dtype=float)
    if predicted.shape[0] != len(table):
        raise ValueError(f"organ-dose model returned {predicted.shape[0]} predictions for {len(table)} rows")
    return table.assign(**{PREDICTION_COLUMN: predicted.reshape(len(table), -1)[:, 0]})
