"""Regions of interest: which SEG segment label or RTSTRUCT ROI name is which ROI, and its class.

A ROI YAML lists the ROIs in label order (label 1 = first ROI in every label map)::

    rois:
      - name: liver          # canonical name, as written in feature tables
        class: normal        # class used by the classifiers
        aliases: [Liver_GTV] # optional: other spellings of the SEG label / RTSTRUCT ROI name

Labels match a ROI by name or alias ignoring case, spaces, ``_`` and ``-``. The default set
(:func:`load_rois` with no path) is the phantom's six ROIs in four classes, shipped as
``ctdose/data/rois_phantom.yaml``; :mod:`ctdose.naming` derives ``ROI_NAMES`` / ``ROI_CLASSES`` from it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

#: The default ROI YAML (package data): the phantom's six ROIs.
DEFAULT_ROIS_FILE = "rois_phantom.yaml"
#: Keys of one ROI entry.
_ENTRY_KEYS = ("name", "class", "aliases")
#: Label maps are uint8: at most 255 ROIs.
MAX_ROIS = 255


def label_key(label: str) -> str:
    """The matching key of a label: lower case without spaces, ``_`` or ``-``."""
    return re.sub(r"[\s_\-]+", "", str(label).strip().lower())


@dataclass(frozen=True)
class RoiSet:
    """An ordered set of ROIs: ``names`` (label n = ``names[n - 1]``), their ``classes``, and aliases.

    ``source`` names where the set came from (the YAML path), for messages.
    """

    names: tuple[str, ...]
    classes: dict[str, str]
    aliases: dict[str, str] = field(default_factory=dict)  # label key -> ROI name (names included)
    source: str = "ROI set"

    def find(self, label: str) -> str | None:
        """The ROI name a SEG/RTSTRUCT label stands for, or None if it is none of the set."""
        return self.aliases.get(label_key(label))

    def canonical(self, label: str) -> str:
        """The ROI name a label stands for; ``ValueError`` naming the label and the set otherwise."""
        name = self.find(label)
        if name is None:
            raise ValueError(f"unknown ROI label {label!r}; {self.source} has {', '.join(self.names)}")
        return name

    def label_of(self, name: str) -> int:
        """Label value (1-based) of a canonical ROI name."""
        return self.names.index(name) + 1

    @property
    def class_names(self) -> tuple[str, ...]:
        """The distinct classes, in order of first appearance."""
        return tuple(dict.fromkeys(self.classes[n] for n in self.names))


def parse_rois(data: object, source: str) -> RoiSet:
    """A RoiSet from parsed YAML ``data``; ``ValueError`` naming ``source`` and the bad key otherwise."""

    def bad(where: str, why: str) -> ValueError:
        return ValueError(f"{source}: {where}: {why}")

    if not isinstance(data, dict) or set(data) != {"rois"}:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise bad("top level", f"expected one key 'rois' (a list of ROIs), found {keys}")
    entries = data["rois"]
    if not isinstance(entries, list) or not entries:
        raise bad("rois", "expected a non-empty list of ROIs")
    if len(entries) > MAX_ROIS:
        raise bad("rois", f"{len(entries)} ROIs; label maps hold at most {MAX_ROIS}")
    names: list[str] = []
    classes: dict[str, str] = {}
    aliases: dict[str, str] = {}
    for n, entry in enumerate(entries):
        where = f"rois[{n}]"
        if not isinstance(entry, dict):
            raise bad(where, f"expected a mapping with keys {', '.join(_ENTRY_KEYS)}")
        unknown = [k for k in entry if k not in _ENTRY_KEYS]
        if unknown:
            raise bad(where, f"unknown key {unknown[0]!r} (expected {', '.join(_ENTRY_KEYS)})")
        for key in ("name", "class"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise bad(f"{where}.{key}", "missing or not a non-empty string")
        name, roi_class = entry["name"].strip(), entry["class"].strip()
        spellings = entry.get("aliases", []) or []
        if not isinstance(spellings, list) or not all(isinstance(a, str) and a.strip() for a in spellings):
            raise bad(f"{where}.aliases", "expected a list of non-empty strings")
        for spelling in (name, *spellings):
            key = label_key(spelling)
            if key in aliases:
                raise bad(f"{where}", f"label {spelling!r} already stands for ROI {aliases[key]!r}")
            aliases[key] = name
        names.append(name)
        classes[name] = roi_class
    return RoiSet(tuple(names), classes, aliases, source)


def load_rois(path: str | Path | None = None) -> RoiSet:
    """The ROI set of a YAML file, or the phantom's six ROIs when ``path`` is None.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file (and the bad key).
    """
    if path is None:
        return default_rois()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ROI YAML {path}")
    return _parse_file(path.read_text(), str(path))


@functools.cache
def default_rois() -> RoiSet:
    """The phantom's six ROIs in four classes (``ctdose/data/rois_phantom.yaml``)."""
    text = resources.files("ctdose").joinpath("data", DEFAULT_ROIS_FILE).read_text()
    return _parse_file(text, f"ctdose/data/{DEFAULT_ROIS_FILE}")


def _parse_file(text: str, source: str) -> RoiSet:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{source}: not valid YAML ({str(err).splitlines()[0]})") from None
    return parse_rois(data, source)
