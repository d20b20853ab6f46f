"""Sidecars, both ways: the one owner of what is written beside every output and of "is it current".

Every output ``x.csv`` (or ``x.tfm``, ``x.nii.gz``...) has a sidecar ``x.json`` holding

* ``settings``: what the step was asked to do, normalised by :func:`normalise` (one JSON form),
* ``sha256`` and ``n_rows`` of the output itself, and ``outputs``: sha256 of the step's other files,
* ``inputs``: sha256 of every file the step read (absolute path -> checksum),
* versions, command line, time and any extra fields the step adds.

Two rules follow, and no step has another:

* :func:`is_current` -- a step skips its work only when its output and sidecar exist, the output and
  every other output still have their recorded checksums, the settings are equal and every input
  still has the checksum it had when the output was made. Timestamps are never used.
* :func:`verify` -- a step checks every file it reads against its producer's sidecar (checksum, row
  count) and refuses a truncated, edited or half-written input with one line naming the file and the
  command that remakes it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Iterable

from ctdose import __version__
from ctdose.atomic import json_default, write_json

#: Distributions whose versions are recorded (absent ones are recorded as ``None``).
TRACKED_DISTRIBUTIONS = (
    "numpy", "scipy", "pandas", "torch", "monai", "pyradiomics-bhklab", "SimpleITK", "pydicom",
    "highdicom", "scikit-learn", "scikit-image", "umap-learn", "pingouin", "dask",
)

PathLike = str | os.PathLike


class StaleInputError(ValueError):
    """An input does not match its producer's sidecar (truncated, edited, half-written or missing)."""


def library_versions() -> dict[str, str | None]:
    """Versions of Python, ctdose and the tracked libraries."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "ctdose": __version__}
    for dist in TRACKED_DISTRIBUTIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def normalise(obj: Any) -> Any:
    """The one JSON form of settings: tuples become lists, numpy scalars numbers, paths strings."""
    return json.loads(json.dumps(obj, default=json_default, sort_keys=True))


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: PathLike) -> str:
    """sha256 of a file's bytes (cached within the process by path, size and modification time)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def sidecar_path(output: PathLike) -> Path:
    """``x.csv`` -> ``x.json`` (``x.nii.gz`` -> ``x.json``, ``x.json`` -> ``x.provenance.json``);
    a folder's is ``<folder>/provenance.json``."""
    output = Path(output)
    if output.is_dir():
        return output / "provenance.json"
    if output.suffix == ".json":
        return output.with_name(f"{output.stem}.provenance.json")
    name = output.name.removesuffix(".gz")
    return output.with_name(Path(name).with_suffix(".json").name)


def _key(path: PathLike) -> str:
    return os.path.abspath(os.fspath(path))


def _checksums(paths: Iterable[PathLike]) -> dict[str, str]:
    return {_key(p): file_sha256(p) for p in paths}


def count_csv_rows(path: PathLike) -> int:
    """Data rows of a CSV file (records after the header; quoted newlines handled)."""
    import csv

    with Path(path).open(newline="", errors="replace") as handle:  # a count, even of a damaged file
        return max(0, sum(1 for _ in csv.reader(handle)) - 1)


def write_sidecar(output: PathLike, settings: dict[str, Any], *, inputs: Iterable[PathLike] = (),
                  outputs: Iterable[PathLike] = (), n_rows: int | None = None, **extra: Any) -> Path:
    """Write the sidecar of ``output`` (see the module docstring); returns its path.

    ``inputs``: files the step read; ``outputs``: the step's other files (figures, second tables);
    ``n_rows``: rows of a table output (counted from the file for a CSV when not given).
    """
    output = Path(output)
    if n_rows is None and output.suffix == ".csv":
        n_rows = count_csv_rows(output)
    record = {
        "output": output.name,
        "sha256": None if output.is_dir() else file_sha256(output),
        "n_rows": n_rows,
        "outputs": _checksums(outputs),
        "inputs": _checksums(inputs),
        "settings": normalise(settings),
        **normalise(extra),
        "versions": library_versions(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "host_cpus": os.cpu_count(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return write_json(record, sidecar_path(output))


def read_sidecar(output: PathLike) -> dict[str, Any] | None:
    """The sidecar of ``output``; ``None`` when there is none; ValueError naming a corrupt one."""
    path = sidecar_path(output)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: corrupt sidecar ({err}); delete it and re-run the step that wrote "
                         f"{Path(output).name}") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err.strerror})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: corrupt sidecar (not a JSON object)")
    return record


def is_current(output: PathLike, settings: dict[str, Any], inputs: Iterable[PathLike] = (),
               outputs: Iterable[PathLike] = ()) -> bool:
    """True when ``output`` was made with these ``settings`` from these ``inputs`` and is intact.

    Intact: ``output`` and each of ``outputs`` exist with the checksums their sidecar recorded.
    A missing or corrupt sidecar, a missing input, a changed input or other settings: False.
    """
    output, outputs = Path(output), list(outputs)
    try:
        record = read_sidecar(output)
    except ValueError:
        return False
    if record is None or not output.is_file():
        return False
    wanted_outputs = {_key(p) for p in outputs}
    if not wanted_outputs <= set(record.get("outputs", {})):
        return False
    try:
        return (record.get("sha256") == file_sha256(output)
                and record.get("settings") == normalise(settings)
                and all(file_sha256(p) == record["outputs"][k] for p, k in zip(outputs, map(_key, outputs)))
                and record.get("inputs") == _checksums(inputs))
    except OSError:  # an input or output vanished
        return False


def recorded_outputs(output: PathLike) -> list[Path]:
    """The other outputs ``output``'s sidecar lists ([] without a readable sidecar): what to pass to
    :func:`is_current` when the figures a step writes depend on its data (e.g. one per extractor)."""
    try:
        record = read_sidecar(output)
    except ValueError:
        return []
    return [Path(p) for p in (record or {}).get("outputs", {})]


def verify(path: PathLike, remedy: str) -> dict[str, Any]:
    """Check a file read as input against its producer's sidecar; return the sidecar.

    Raises FileNotFoundError when the file is missing, :class:`StaleInputError` when its sidecar is
    missing or its checksum or row count differs from the record (truncated, edited, half-written);
    the one-line message names the file, what is wrong and ``remedy``, the command that remakes it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run {remedy}")
    record = read_sidecar(path)
    if record is None:
        raise StaleInputError(f"{path} has no sidecar {sidecar_path(path).name}, so it cannot be trusted "
                              f"as complete; run {remedy}")
    if record.get("sha256") != file_sha256(path):
        what = "changed since it was written"
        if path.suffix == ".csv" and record.get("n_rows") is not None:
            rows = count_csv_rows(path)
            if rows != record["n_rows"]:
                what = f"has {rows} rows but its sidecar says {record['n_rows']} (truncated or edited)"
        raise StaleInputError(f"{path} {what}; run {remedy}")
    return record
