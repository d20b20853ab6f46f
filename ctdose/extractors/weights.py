"""Reading network checkpoints and loading them into a module, with clear errors and a key report.

Accepted sources (:func:`read_state_dict`):

* a ``.safetensors`` file;
* a ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` torch file (read with ``weights_only=True``: no code runs);
  a dict wrapping the tensors under ``state_dict`` / ``model`` / ``module`` is unwrapped;
* a folder (e.g. a Hugging Face snapshot) holding ``model.safetensors`` or ``pytorch_model.bin``;
* a Hugging Face hub id ``owner/name`` (only when it is not an existing path): downloaded with
  ``huggingface_hub`` when online; with ``HF_HUB_OFFLINE=1`` or no network only the local cache is used,
  and a miss fails at once with a message saying where to put the files.

:func:`load_into` maps keys (callers pass their prefix/rename rules), refuses shape mismatches and
missing parameters, and returns a :class:`LoadReport` (missing buffers, unexpected keys) for the sidecar.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

#: File names searched in a snapshot folder, in order.
SNAPSHOT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
#: Suffixes of checkpoint files: a source ending in one is a local path, never a hub id.
WEIGHT_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass
class LoadReport:
    """What a checkpoint load did: file, checksum, counts and the keys that did not match."""

    path: str
    sha256: str
    n_loaded: int
    missing: list[str] = field(default_factory=list)  # model keys absent from the file (buffers only)
    unexpected: list[str] = field(default_factory=list)  # file keys the model does not have

    def as_dict(self) -> dict:
        return {"weights": self.path, "weights_sha256": self.sha256, "n_loaded": self.n_loaded,
                "missing_keys": self.missing, "unexpected_keys": self.unexpected}

    def summary(self) -> str:
        return (f"loaded {self.n_loaded} tensors from {self.path}; {len(self.missing)} missing buffer(s), "
                f"{len(self.unexpected)} unexpected key(s) ignored"
                + (f" (e.g. {', '.join(self.unexpected[:3])})" if self.unexpected else ""))


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_weights(source: str, timeout_s: float = 10.0) -> Path:
    """A local checkpoint file for ``source`` (file, snapshot folder or hub id); FileNotFoundError if none."""
    path = Path(source).expanduser()
    if path.is_dir():
        for name in SNAPSHOT_FILES:
            if (path / name).exists():
                return path / name
        raise FileNotFoundError(f"weights folder {path} holds none of {', '.join(SNAPSHOT_FILES)}")
    if path.exists():
        return path
    if not looks_like_hub_id(source):
        raise FileNotFoundError(f"weights file {source} not found (no such file or folder: {path.resolve()})")
    return Path(_hub_download(source, timeout_s))


def looks_like_hub_id(source: str) -> bool:
    """True for ``owner/name`` that cannot be a local path: no checkpoint suffix, and no local folder
    ``owner`` (``weights/model.pt`` and ``swin/weights/x`` are paths; ``project-lighter/ct_fm`` is an id)."""
    path = Path(source)
    return (bool(_HUB_ID.match(source)) and path.suffix.lower() not in WEIGHT_SUFFIXES
            and not path.parent.exists())


def _hub_download(repo_id: str, timeout_s: float) -> str:
    """A hub repo's weights file: from the local cache, else downloaded; fails fast without network.

    Order: the cache (no network needed); with ``HF_HUB_OFFLINE=1`` nothing else; otherwise one TCP
    probe of the hub endpoint (``timeout_s``) before downloading, so an offline machine fails in
    seconds instead of waiting through the client's retries.
    """
    import socket
    from urllib.parse import urlparse

    import huggingface_hub
    from huggingface_hub.constants import ENDPOINT
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    for name in SNAPSHOT_FILES[:2]:
        try:
            return huggingface_hub.hf_hub_download(repo_id, name, local_files_only=True)
        except LocalEntryNotFoundError:
            continue
    hint = f"download the snapshot of {repo_id} on a connected machine and pass its folder"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise FileNotFoundError(f"weights {repo_id!r} are not in the Hugging Face cache and HF_HUB_OFFLINE is "
                                f"set (offline); {hint}")
    host = urlparse(ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError as err:
        raise FileNotFoundError(f"cannot reach {host} for weights {repo_id!r} (no network: {err}); {hint}") from None
    errors = []
    for name in SNAPSHOT_FILES[:2]:
        try:
            return huggingface_hub.hf_hub_download(repo_id, name, etag_timeout=timeout_s)
        except LocalEntryNotFoundError as err:  # subclass of EntryNotFoundError: the network failed
            raise FileNotFoundError(f"cannot download weights {repo_id!r}: {str(err).splitlines()[0][:160]}; "
                                    f"{hint}") from None
        except EntryNotFoundError as err:  # this file name is not in the repo: try the next
            errors.append(str(err).splitlines()[0])
        except Exception as err:  # hub errors (repo not found, auth) have many types
            raise FileNotFoundError(f"cannot get weights {repo_id!r} from the hub: {str(err).splitlines()[0]}") from None
    raise FileNotFoundError(f"hub repo {repo_id!r} has none of {', '.join(SNAPSHOT_FILES[:2])}: {errors}")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (safetensors or torch); ValueError naming the file if unreadable."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign files raise many different types
        raise ValueError(f"cannot read weights file {path}: {type(err).__name__}: {str(err).splitlines()[0][:200]}") \
            from None
    while isinstance(obj, dict) and not _is_tensor_dict(obj):
        inner = next((obj[k] for k in ("state_dict", "model", "module", "network") if isinstance(obj.get(k), dict)),
                     None)
        if inner is None:
            raise ValueError(f"weights file {path} holds no state_dict (top-level keys: {', '.join(list(obj)[:8])})")
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"weights file {path} holds no tensors (found {type(obj).__name__})")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_tensor_dict(obj: dict) -> bool:
    return bool(obj) and sum(isinstance(v, torch.Tensor) for v in obj.values()) >= max(1, len(obj) // 2)


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike,
              rename: Callable[[str], str | None] = lambda k: k) -> LoadReport:
    """Copy ``state`` (keys mapped by ``rename``; ``None`` drops a key) into ``module``.

    Raises ValueError naming the file when no key matches (wrong file), when a shape differs, or when a
    parameter of the module is missing from the file (it would silently stay random). Missing buffers
    (e.g. recomputable index tables) and unexpected keys are reported, not fatal.
    """
    mapped = {}
    for key, value in state.items():
        new = rename(key)
        if new is not None:
            mapped[new] = value
    own = module.state_dict()
    unexpected = sorted(k for k in mapped if k not in own)
    matched = [k for k in mapped if k in own]
    if not matched:
        raise ValueError(f"weights file {path} does not fit this model: none of its {len(state)} keys match "
                         f"(file has e.g. {', '.join(list(state)[:3])}; model expects e.g. {', '.join(list(own)[:3])})")
    wrong = [f"{k} {tuple(mapped[k].shape)} != {tuple(own[k].shape)}" for k in matched
             if mapped[k].shape != own[k].shape]
    if wrong:
        raise ValueError(f"weights file {path}: {len(wrong)} tensor(s) with the wrong shape, e.g. {'; '.join(wrong[:3])}")
    params = {name for name, _ in module.named_parameters()}
    missing = sorted(k for k in own if k not in mapped)
    missing_params = [k for k in missing if k in params]
    if missing_params:
        raise ValueError(f"weights file {path} lacks {len(missing_params)} parameter(s) of the model, e.g. "
                         f"{', '.join(missing_params[:3])}")
    module.load_state_dict({k: mapped[k] for k in matched}, strict=False)
    return LoadReport(path=str(path), sha256=sha256(path), n_loaded=len(matched), missing=missing,
                      unexpected=unexpected)
