"""Feature extractors: PyRadiomics, a shallow 3-D CNN, the SwinUNETR encoder and CT-FM's SegResEncoder.

Modules, one job each:

* :mod:`.driver` - the loop shared by all four: catalog/center selection, per-series partial tables
  written atomically (a re-run skips them), merge into ``results/features/<name>.csv`` + JSON sidecar.
* :mod:`.radiomics_features` - PyRadiomics on in-memory SimpleITK patches or ROI masks.
* :mod:`.deep` - batched inference shared by the three networks (device, autocast, determinism).
* :mod:`.weights` - reading checkpoints (.pt/.bin/.safetensors, Hugging Face snapshots) and loading
  them into a module with a report of missing/unexpected keys.
* :mod:`.cnn`, :mod:`.swin`, :mod:`.ctfm` - the three networks and their input normalisation.
"""

#: Extractor names: feature table names and feature column prefixes.
EXTRACTOR_NAMES: tuple[str, ...] = ("radiomics", "cnn", "swin", "ctfm")
