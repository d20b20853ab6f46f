"""The analysis protocols as data: one flag (``--protocol``) picks every step's defaults.

Three presets, each a :class:`Protocol` holding one frozen dataclass per step (field names = the
step script's flag destinations, so a preset is the script's ``argparse`` defaults; a flag given
explicitly still wins). The protocol's name is recorded in every output sidecar's settings, so a
change of protocol recomputes.

* ``toolkit`` (the default): this toolkit's own analysis, today's behaviour. ICC(3,1) per feature,
  unclipped, in both views (raters = doses within a scanner; raters = scanners at each dose), targets
  = ROI patches, each reconstruction apart, repeated scans averaged; UMAP 100 / 1.0 / 1000 epochs;
  patches 64x64x32; LOSO-N training scanners drawn at random.
* ``study``: the public code of the study the toolkit reproduces ("Impact of CT dose on AI
  performance: a comparison of radiomics, deep, and foundation models in a multicentric
  anthropomorphic phantom study", Med Phys 2026). ICC(3,k) clipped at 0, per scanner with raters =
  doses, targets = the six ROIs (patch features averaged per ROI), reconstructions and repeated scans
  averaged; UMAP n_neighbors 20, min_dist 0.5; patches 64x64x32; LOSO-N training scanners drawn from
  the other manufacturers first (the study code's variant). Cross-dose classification uses the study's
  MLP but always tests on a held-out scanner: the study code's leak (test scans from scanners seen in
  training) is not reproduced, and the sidecar says so.
* ``dataset-paper``: the CT4Harmonization-Multicentric dataset paper (TCIA collection's data
  descriptor). ICC(3,1) across the 13 scanners at 10 mGy, features averaged over reconstructions and
  repeated scans, clipped at 0, averaged over features (its Table 7); UMAP 100 / 1.0 / 1000 epochs;
  patches 32x32x16; LOSO-N (Algorithm 1, random draws) and 10-fold-n (Algorithm 2) curves; MLP
  100-60-30, GELU, dropout 0.2.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Sequence

#: MLP architecture both papers use (and :class:`ctdose.stats.mlp.MLPClassifier` builds).
MLP_HIDDEN: tuple[int, ...] = (100, 60, 30)
MLP_ACTIVATION = "GELU"
MLP_DROPOUT = 0.2


@dataclass(frozen=True)
class ICCPreset:
    """Defaults of analyze/icc.py (see :class:`ctdose.stats.icc.ICCSettings` for each field)."""

    views: tuple[str, ...]      # 'dose': raters = doses within a scanner; 'scanner': raters = scanners per dose
    targets: str                # 'roi_patch': each ROI patch; 'roi': patch features averaged per ROI
    recon: str                  # 'each' reconstruction apart, or 'average' over reconstructions
    repetitions: str            # 'average' over repeated scans, or 'first'
    clip: bool                  # negative ICCs set to 0
    statistic: str              # summarised ICC: 'icc3_1' (single rater) or 'icc3_k' (mean of k raters)
    doses: tuple[float, ...]    # doses used (mGy); () = all


@dataclass(frozen=True)
class UMAPPreset:
    """Defaults of analyze/umap_plots.py."""

    n_neighbors: int
    min_dist: float
    epochs: int


@dataclass(frozen=True)
class PatchPreset:
    """Default patch size of the extractor scripts (voxels x, y, z on the 0.68 x 0.68 x 2 mm grid), and
    the sizes of extractors whose network cannot take it (``per_extractor``: (name, size) pairs)."""

    patch_size: tuple[int, int, int]
    per_extractor: tuple[tuple[str, tuple[int, int, int]], ...] = ()

    def size_for(self, extractor: str | None) -> tuple[int, int, int]:
        """The default patch size of ``extractor`` (None: the protocol's own)."""
        return dict(self.per_extractor).get(extractor, self.patch_size)


@dataclass(frozen=True)
class ClassifyPreset:
    """Defaults of analyze/classify.py (``classifier``, ``loso_draw``, ``n_folds``) and what the
    protocol says of its MLP and cross-dose design (recorded in the sidecar, not flags)."""

    classifier: str
    loso_draw: str
    n_folds: int
    mlp_hidden: tuple[int, ...] = MLP_HIDDEN
    mlp_activation: str = MLP_ACTIVATION
    mlp_dropout: float = MLP_DROPOUT
    cross_dose_note: str = "train at dose A, test at dose B on a held-out scanner (leave one scanner out)"

    def flag_defaults(self) -> dict[str, Any]:
        return {"classifier": self.classifier, "loso_draw": self.loso_draw, "n_folds": self.n_folds}

    def notes(self) -> dict[str, Any]:
        return {"mlp": f"hidden {'-'.join(map(str, self.mlp_hidden))}, {self.mlp_activation}, "
                       f"dropout {self.mlp_dropout:g}", "cross_dose": self.cross_dose_note}


@dataclass(frozen=True)
class Protocol:
    """One preset: its name, the paper it reproduces and each step's defaults."""

    name: str
    reproduces: str
    icc: ICCPreset
    umap: UMAPPreset
    patches: PatchPreset
    classify: ClassifyPreset


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol(
        name="toolkit",
        reproduces="no paper: the toolkit's own analysis (per-feature ICC(3,1), unclipped, each "
                   "reconstruction apart)",
        icc=ICCPreset(views=("dose", "scanner"), targets="roi_patch", recon="each", repetitions="average",
                      clip=False, statistic="icc3_1", doses=()),
        umap=UMAPPreset(n_neighbors=100, min_dist=1.0, epochs=1000),
        patches=PatchPreset(patch_size=(64, 64, 32)),
        classify=ClassifyPreset(classifier="mlp", loso_draw="random", n_folds=10)),
    Protocol(
        name="study",
        reproduces="the study's public code (Impact of CT dose on AI performance, Med Phys 2026)",
        icc=ICCPreset(views=("dose",), targets="roi", recon="average", repetitions="average",
                      clip=True, statistic="icc3_k", doses=()),
        # the study states n_neighbors and min_dist only; 200 epochs is umap-learn's own default for
        # more than 10,000 rows, which the study's 82,680 patches per extractor are
        umap=UMAPPreset(n_neighbors=20, min_dist=0.5, epochs=200),
        patches=PatchPreset(patch_size=(64, 64, 32)),
        classify=ClassifyPreset(
            classifier="mlp", loso_draw="other-manufacturer-first", n_folds=10,
            cross_dose_note="the study's MLP, but the test scanner is held out of training: the study "
                            "code's leak (test scans from scanners seen in training) is not reproduced")),
    Protocol(
        name="dataset-paper",
        reproduces="the CT4Harmonization-Multicentric dataset paper (Table 7, Algorithms 1 and 2)",
        icc=ICCPreset(views=("scanner",), targets="roi_patch", recon="average", repetitions="average",
                      clip=True, statistic="icc3_1", doses=(10.0,)),
        umap=UMAPPreset(n_neighbors=100, min_dist=1.0, epochs=1000),
        # SwinUNETR's windows need sides that are multiples of 32 voxels: its patches here are the
        # protocol's 32 x 32 in-plane with 32 slices (64 mm along z; the toolkit's choice, recorded in
        # the feature table's sidecar as its patch_size)
        patches=PatchPreset(patch_size=(32, 32, 16), per_extractor=(("swin", (32, 32, 32)),)),
        classify=ClassifyPreset(classifier="mlp", loso_draw="random", n_folds=10)),
)}
DEFAULT_PROTOCOL = "toolkit"


def get_protocol(name: str) -> Protocol:
    """The preset called ``name``; ValueError naming the known ones otherwise."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; expected one of {', '.join(PROTOCOLS)}") from None


def _protocol_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--protocol", default=DEFAULT_PROTOCOL, choices=list(PROTOCOLS),
                        help=f"preset whose values are the defaults of {what} (explicit flags override): "
                             "toolkit = this toolkit's own analysis; study = the study's public code; "
                             "dataset-paper = the dataset paper (default: %(default)s)")


def parse_with_protocol(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                        defaults: Callable[[Protocol], dict[str, Any]], what: str) -> argparse.Namespace:
    """Add ``--protocol`` to ``parser`` and parse ``argv``: the chosen preset's ``defaults(protocol)``
    (flag destination -> value) become the parser's defaults, so explicit flags still override them
    wherever they stand on the command line. ``what`` names the flags in ``--help``."""
    _protocol_flag(parser, what)
    first = argparse.ArgumentParser(prog=parser.prog, add_help=False)
    first.add_argument("--protocol", default=DEFAULT_PROTOCOL, choices=list(PROTOCOLS))
    known, _ = first.parse_known_args(argv)
    parser.set_defaults(**{k: list(v) if isinstance(v, tuple) else v
                           for k, v in defaults(get_protocol(known.protocol)).items()})
    return parser.parse_args(argv)


class _PatchSizeFromProtocol(argparse.Action):
    """``--protocol NAME``: store it and, unless ``--patch-size`` was given, take the preset's size (for
    the extractor named in ``extractor``)."""

    extractor: str | None = None

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        # argparse builds a new list for every explicit --patch-size, so identity with the parser's
        # default object means "not given" wherever --patch-size stands on the command line
        if getattr(namespace, "patch_size", None) is parser.get_default("patch_size"):
            setattr(namespace, "patch_size", list(get_protocol(values).patches.size_for(self.extractor)))


def add_patch_protocol_flag(parser: argparse.ArgumentParser, extractor: str | None = None) -> None:
    """``--protocol`` for an extractor script whose ``--patch-size`` (nargs=3) is already added: the
    preset sets the patch size (``extractor``'s, where the preset gives one) unless ``--patch-size`` is
    given (in either order)."""
    action = type("PatchSizeFromProtocol", (_PatchSizeFromProtocol,), {"extractor": extractor})
    parser.add_argument("--protocol", default=DEFAULT_PROTOCOL, choices=list(PROTOCOLS), action=action,
                        help="preset whose patch size is the default (explicit --patch-size overrides): "
                             + ", ".join(f"{n} {'x'.join(map(str, p.patches.size_for(extractor)))}"
                                         for n, p in PROTOCOLS.items()) + " (default: %(default)s)")
