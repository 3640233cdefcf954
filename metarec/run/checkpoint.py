"""Checkpoints: plain dicts of tensors and containers, written atomically, read with weights_only=True.

A checkpoint is {"model", "algo", "step", "rng", "trainer", "config", "metarec", "fingerprint",
"model_spec"}; anything that is not plain data (a pickled object that could run code when loaded)
is refused, never executed.
"""
from __future__ import annotations

import io
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import torch
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from metarec import inputs
from metarec.errors import UserError, first_line

REQUIRED = ("model", "config", "step")


def save(obj: dict, path: str | Path) -> None:
    """Write to a temp file beside `path`, fsync, then rename: a crash or a full disk leaves the old
    file intact and no half-written file under the final name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    data = io.BytesIO()
    torch.save(obj, data)  # in memory first: torch's zip writer reports a full disk as a RuntimeError
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
        raise UserError(f"could not write checkpoint {path} ({e.strerror or e}): {kept}; "
                        f"free disk space or fix the folder's permissions, then resume with trainer.resume=auto") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temps(folder: str | Path) -> None:
    """Temp files a killed writer left behind (never a finished checkpoint)."""
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(".*.pt.tmp-*"):
            tmp.unlink(missing_ok=True)


def load(path: str | Path) -> dict:
    """Read a metarec checkpoint; anything else (or anything that would run code) is refused."""
    path = Path(path)
    if path.is_dir():
        inside = next((p for p in (path / "checkpoints" / "best.pt", path / "best.pt") if p.is_file()), None)
        raise UserError(f"checkpoint {path} is a folder, not a checkpoint file: pass "
                        f"{inside or 'the path of a .pt file in a run' + chr(39) + 's checkpoints/ folder'}")
    inputs.regular_file(path, "checkpoint", "pass the path of a .pt file in a run's checkpoints/ folder",
                        inputs.CHECKPOINT_MAX)  # a FIFO or a device is named, never opened
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise UserError(f"checkpoint {path} cannot be read ({e.strerror or e})") from None
    if not head:
        raise UserError(f"checkpoint {path} is empty (a copy or a write that never finished): "
                        f"pass a checkpoints/last.pt or best.pt written by metarec train")
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch's zip format, or a legacy pickle
        raise UserError(f"checkpoint {path} is not a torch file (it starts with {head!r}): "
                        f"pass a checkpoints/last.pt or best.pt written by metarec train")
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise UserError(f"checkpoint {path} is truncated (its zip directory is missing: a copy or a write that "
                        f"never finished): use another checkpoint, e.g. the run's best.pt or last.pt")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            raise UserError(f"checkpoint {path} was refused: it holds objects that could run code when loaded "
                            f"({_refusal(str(e))}), and metarec loads plain data only; "
                            f"use only checkpoints that metarec wrote") from None
        raise UserError(f"checkpoint {path} is not a torch checkpoint ({first_line(e)}): "
                        f"pass a checkpoints/last.pt or best.pt written by metarec train") from None
    except Exception as e:  # noqa: BLE001 - truncated zips, text files, empty files: one user-facing problem
        raise UserError(f"checkpoint {path} is not a readable checkpoint (truncated, or not a torch file: "
                        f"{first_line(e)}): pass a checkpoints/last.pt or best.pt written by metarec train") from None
    if not isinstance(obj, dict) or not set(REQUIRED) <= obj.keys() or not isinstance(obj["config"], dict):
        raise UserError(f"checkpoint {path} is a torch file but not a metarec checkpoint (it lacks "
                        f"{'/'.join(REQUIRED)}): pass a checkpoints/last.pt or best.pt written by metarec train")
    return obj


def config(ck: dict, path: str | Path) -> DictConfig:
    """The checkpoint's config, checked against this metarec's schemas (a wrong type or unknown key is refused)."""
    from metarec.config.schema import checked  # the schemas import the algorithms and data sets: only when needed

    try:
        return checked(dict(ck["config"]))
    except Exception as e:  # noqa: BLE001 - any mismatch is the same user-facing problem
        key = e.full_key if isinstance(e, OmegaConfBaseException) else None
        detail = f"{key}: {first_line(e)}" if key else first_line(e)
        raise UserError(f"checkpoint {path} has a config that does not fit this metarec's schema ({detail}): "
                        f"use it with the metarec version that wrote it ({ck.get('metarec', '?')})") from None


def _refusal(message: str) -> str:
    """The line of torch's refusal that names what was blocked (not its advice to load unsafely)."""
    for line in message.splitlines():
        if "unsupported" in line.lower() or "global" in line.lower():
            line = line.split("error:")[-1].strip()  # "WeightsUnpickler error: Unsupported global: ..."
            return line.split(". ")[0].rstrip(".")[:160]
    return "not plain data"


def mismatch(state: dict, module: torch.nn.Module) -> str:
    """Why `state` does not load into `module`, in full (torch's message puts it after a line break):
    the first parameter whose shape differs with both shapes, else the names one side lacks."""
    own = module.state_dict()
    differ = [k for k, v in state.items() if k in own and isinstance(v, torch.Tensor)
              and tuple(v.shape) != tuple(own[k].shape)]
    more = lambda names: f" (and {len(names) - 1} more)" if len(names) > 1 else ""  # noqa: E731
    if differ:
        k = differ[0]
        return (f"{k} is {list(state[k].shape)} in the checkpoint but {list(own[k].shape)} in the model "
                f"this config builds{more(differ)}")
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    if missing:
        return f"the checkpoint has no {missing[0]}{more(missing)}, which the model this config builds has"
    if unexpected:
        return f"the checkpoint has {unexpected[0]}{more(unexpected)}, which the model this config builds lacks"
    return "its parameters do not fit"
