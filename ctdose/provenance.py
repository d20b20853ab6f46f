"""Provenance written beside every output: settings, library versions, time, command line."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

from ctdose import __version__
from ctdose.atomic import write_json

#: Distributions whose versions are recorded (absent ones are recorded as ``None``).
TRACKED_DISTRIBUTIONS = (
    "numpy", "scipy", "pandas", "torch", "monai", "pyradiomics-bhklab", "SimpleITK", "pydicom",
    "highdicom", "scikit-learn", "scikit-image", "umap-learn", "pingouin", "dask",
)


def library_versions() -> dict[str, str | None]:
    """Versions of Python, ctdose and the tracked libraries."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "ctdose": __version__}
    for dist in TRACKED_DISTRIBUTIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def provenance(settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A provenance record: the settings used, library versions, command line and UTC time."""
    return {
        "settings": settings,
        **extra,
        "versions": library_versions(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "host_cpus": os.cpu_count(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_sidecar(output: str | os.PathLike, settings: dict[str, Any], **extra: Any) -> Path:
    """Write ``<output>.json`` (e.g. ``swin.csv`` -> ``swin.json``) holding the provenance record."""
    return write_json(provenance(settings, **extra), Path(output).with_suffix(".json"))
