"""The MF floors of a state, computed once and reused by every run and by `metarec eval`: a cache in
$METAREC_FLOOR_CACHE (default $METAREC_CACHE/floors, ~/.cache/metarec/floors), keyed by what they read.

The key is a SHA-256 of the inputs themselves (the data fingerprint, the training ratings' indices, the
state's support and query indices, mu and the floor settings), so any change of split, protocol or
settings misses by construction. A file is written atomically with a stamp (size + SHA-256,
cache_check.py); one that fails its stamp, holds another key or the wrong shapes is named in one
warning line and computed again, never trusted.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from metarec.data import cache_check
from metarec.data.download import atomic_write, default_cache_dir

log = logging.getLogger(__name__)
VERSION = 1  # bump when the floors' computation changes what they return
NAMES = ("mf_foldin", "mf_transductive")


def key(fingerprint: str, train_ratings: np.ndarray, support: Tensor, support_mask: Tensor, query: Tensor,
        mu: float, settings) -> str:
    """The SHA-256 (hex) of everything a state's MF floors read."""
    h = hashlib.sha256(f"floors v{VERSION} {fingerprint} {mu!r} {dataclasses.asdict(settings)!r}".encode())
    for a in (np.asarray(train_ratings, dtype=np.int64), support.cpu().long().numpy(),
              support_mask.cpu().bool().numpy(), query.cpu().long().numpy()):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


FOLDER_ENV = "METAREC_FLOOR_CACHE"


def path_of(k: str) -> Path:
    folder = os.environ.get(FOLDER_ENV)
    return (Path(folder).expanduser() if folder else default_cache_dir() / "floors") / f"{k[:32]}.pt"


def _load(path: Path, k: str, shape: tuple[int, ...]) -> dict[str, Tensor] | None:
    """The cached floors, or None (with one warning line when a file is there but not to be trusted)."""
    if not path.is_file():
        return None
    why = None
    if not cache_check.stamp_ok(path):
        why = "does not match its stamp"
    else:
        try:
            saved = torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - any unreadable file is a miss
            saved, why = None, "cannot be read"
        if saved is not None:
            if not isinstance(saved, dict) or saved.get("key") != k:
                why = "holds another key"
            elif any(not isinstance(saved.get(n), Tensor) or tuple(saved[n].shape) != shape for n in NAMES):
                why = "holds floors of another shape"
            else:
                return {n: saved[n] for n in NAMES}
    log.warning("floor cache: %s %s; computing the floors again", path, why)
    return None


def _save(path: Path, k: str, floors: dict[str, Tensor]) -> None:
    buf = io.BytesIO()
    torch.save({"key": k, **{n: floors[n].detach().cpu().double().contiguous() for n in NAMES}}, buf)
    try:
        with atomic_write(path) as out:
            out.write(buf.getvalue())
        cache_check.write_stamp(path)
    except OSError as e:  # a read-only or full cache: the run goes on, the next one computes them again
        log.warning("floor cache: %s could not be written (%s); the floors are not cached", path, e)


def cached(k: str, shape: tuple[int, ...], compute: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
    """The floors under key k ([tasks, Q] each, float64 on the CPU): read, or computed and written."""
    path = path_of(k)
    found = _load(path, k, shape)
    if found is not None:
        return found
    floors = compute()
    _save(path, k, floors)
    return {n: floors[n].detach().cpu().double() for n in NAMES}
