"""A run's folder: metrics.jsonl, status.json, run_info.json, eval.json/md and checkpoints/ under the
Hydra run dir, and the same scalars as TensorBoard events with trainer.tensorboard=true. A full disk
or an unwritable folder ends the run with one line, never with a half-written file."""
from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path

import torch

import metarec
from metarec.run import checkpoint
from metarec.run.device import cpu_count, parallel_jobs
from metarec.errors import UserError
from metarec.run.run_lock import RunLock, busy, held, identity
from metarec.tasks import TaskSource

log = logging.getLogger("metarec")


class RunFolder:
    """Writes the run's records; `saved` says which checkpoint this process last wrote at which step.
    take_lock() takes the folder's lock (metarec/run/run_lock.py), held until release() or the process's
    end; until then nothing but a refusal's record is written, and no status into a live run's folder."""

    def __init__(self, path: Path, tensorboard: bool = False):
        self.path = path
        writing(path, lambda: self.path.mkdir(parents=True, exist_ok=True))
        self.lock: RunLock | None = None
        self.had_status = (path / "status.json").exists()  # a previous run's record, kept unless we run
        self.running, self.step = False, 0
        self.saved: dict[str, int] = {}  # checkpoint name -> the step this process last wrote to it
        self._tensorboard = tensorboard_class() if tensorboard else None  # the writer is made at the first row
        self.tensorboard = None

    def take_lock(self, what: str = "train") -> None:
        """One live process per folder: refuse (one line naming the holder) while another holds it; a
        dead holder's lock is free, and its folder is taken over with a warning."""
        self.lock = RunLock.take(self.path, what)
        if self.lock.stale and _status(self.path) == "running":  # its holder died without a last word
            log.warning("%s was left by %s, which is no longer running: this run takes the folder over",
                        self.path, busy(self.lock.stale))

    def owns(self) -> bool:
        """May this process write the folder's status: it holds the lock, or no live process does."""
        return self.lock is not None or not held(self.path)

    def write_json(self, name: str, obj: dict) -> None:
        self.write_text(name, json.dumps(obj, indent=2) + "\n")

    def write_text(self, name: str, text: str) -> None:
        tmp = self.path / f".{name}.tmp"

        def write() -> None:
            tmp.write_text(text)
            tmp.replace(self.path / name)
        writing(self.path / name, write, cleanup=tmp)

    def status(self, status: str, step: int, reason: str | None = None) -> None:
        if not self.owns():
            return  # a refused command never writes over the live run's status
        """status.json: the status and the step; while running also a heartbeat (the time of this write)
        and the writer's pid and host, so that a reader can tell a run that died from a live one."""
        live = {"heartbeat": round(time.time(), 3), **identity()} if status == "running" else {}
        self.write_json("status.json", {"status": status, "reason": reason, "step": step, **live})
        self.running = status == "running"
        self.step = step

    def beat(self, step: int | None = None) -> None:
        """Keep a running run's status.json current: its step (when given) and the heartbeat."""
        if self.running:
            self.status("running", self.step if step is None else step)

    def release(self) -> None:
        """Give up the folder's lock (the process's end does it too)."""
        if self.lock is not None:
            self.lock.release()

    def record_failure(self, step: int, reason: str) -> None:
        """status.json says failed, unless the folder holds another run's record that this run never
        took over (e.g. a refusal to overwrite it); never hides the original error."""
        if (self.running or not self.had_status) and self.owns():
            try:
                self.status("failed", step, reason)
            except Exception:  # noqa: BLE001 - a full disk: the console line is what matters
                pass

    def metrics(self, row: dict) -> None:
        def append() -> None:
            with open(self.path / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        writing(self.path / "metrics.jsonl", append)
        if row.get("split") == "train":
            self.beat(row["step"])  # every trainer.log_every steps
        if self._tensorboard is not None and self.tensorboard is None:
            self.tensorboard = self._tensorboard(log_dir=str(self.path / "tensorboard"))
        if self.tensorboard is not None:
            for key, value in row.items():
                if key not in ("step", "split") and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{row['split']}/{key}", value, row["step"])
            self.tensorboard.flush()  # live curves; no close() needed at exit

    def keep_metrics(self, step: int, source: Path | None = None) -> None:
        """After a resume from `step`: keep the rows up to it (from `source`, another run's
        metrics.jsonl, if given); the resumed run writes the later ones again."""
        source = source or self.path / "metrics.jsonl"
        rows = []
        if source.is_file():
            for line in source.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                if isinstance(row, dict) and row.get("step", 0) <= step:
                    rows.append(line + "\n")
        self.write_text("metrics.jsonl", "".join(rows))

    def checkpoint(self, name: str, obj: dict) -> Path:
        path = self.path / "checkpoints" / name
        checkpoint.save(obj, path)
        self.saved[name] = obj["step"]
        return path


def run_info(cfg, device: torch.device, source: TaskSource, start: Path | None, step: int) -> dict:
    """run_info.json: versions, the machine, the data read, and where a resumed run started."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"metarec": metarec.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "device_name": name, "threads": torch.get_num_threads(),
            "parallel_jobs": parallel_jobs(cpu_count()),  # sweep jobs sharing the machine (joblib's n_jobs)
            "data_fingerprint": source.fingerprint(), "data_files": [str(p) for p in source.source_files],
            "seed": cfg.seed, "resumed_from": None if start is None else {"checkpoint": str(start), "step": step}}


class BareFolder:
    """The failure record of a run that failed before its RunFolder existed (e.g. device=cuda on a CPU)."""

    def __init__(self, path: Path):
        self.path = path

    def record_failure(self, step: int, reason: str) -> None:
        status = self.path / "status.json"
        if self.path.is_dir() and not status.exists() and not held(self.path):  # never a live run's folder
            try:
                status.write_text(json.dumps({"status": "failed", "reason": reason, "step": step}, indent=2) + "\n")
            except OSError:
                pass


def _status(path: Path) -> str | None:
    try:
        return json.loads((path / "status.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def writing(path: Path, write, cleanup: Path | None = None) -> None:
    """Run `write`; a full disk or an unwritable folder becomes one clear line."""
    try:
        write()
    except OSError as e:
        if cleanup is not None:
            try:
                cleanup.unlink(missing_ok=True)
            except OSError:
                pass
        raise UserError(f"could not write {path} ({e.strerror or e}): free disk space or choose a writable "
                        f"hydra.run.dir; a stopped run continues with trainer.resume=auto") from None


def tensorboard_class():
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
    except ImportError:
        raise UserError("trainer.tensorboard=true needs the tensorboard package: pip install 'metarec[tensorboard]' "
                        "(or pip install tensorboard), or leave trainer.tensorboard=false") from None
    return SummaryWriter
