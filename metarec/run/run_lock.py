"""One process per run folder: an flock on RUN/.lock, held for the process's life, and a process's
heartbeat in status.json, so that readers can tell a live run from one that died.

The kernel drops an flock when its process ends, however it ends (kill -9, the OOM killer, a power
cut of the process), so a lock that can be taken is never held: nothing has to guess whether a
recorded pid still lives. The file's content (pid, host, start time, command) is only for the message
that names who holds the folder. A lock on another host's filesystem (NFS without lock support, a
folder copied off a cluster) cannot be tested: there status.json's heartbeat decides (runs.liveness).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from metarec.errors import UserError

LOCK = ".lock"
STALE_HEARTBEAT_S = 30 * 60  # no heartbeat for this long on a run whose lock cannot be tested: it died


def identity() -> dict:
    """Who this process is, as the lock file and status.json record it."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": round(_START, 3)}


_START = time.time()


class RunLock:
    """The exclusive lock of one run folder, held until release() or the process's end."""

    def __init__(self, folder: Path, fd: int, stale: dict | None):
        self.folder, self.fd = folder, fd
        self.stale = stale  # the record of a dead holder this lock was taken over from, if any

    @classmethod
    def take(cls, folder: Path, what: str = "run", advice: str = "choose another hydra.run.dir") -> "RunLock":
        """Lock `folder` (created by the caller) for this process, or refuse in one line naming the
        holder. A lock left by a dead process is free by construction; its record is returned as stale."""
        path = folder / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(20):  # a reader (report) holds a shared lock for a moment
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    os.close(fd)
                    return cls(folder, -1, None)  # a filesystem without flock: the run goes on unlocked
                if attempt == 19:
                    holder = read_record(path)
                    os.close(fd)
                    raise UserError(f"{folder} is in use by another {busy(holder)}: wait for it to end, "
                                    f"or {advice}") from None
                time.sleep(0.05)
        stale = read_record(path) or None
        record = {**identity(), "what": what, "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        return cls(folder, fd, stale)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock; the file stays (its content is only a record)
            self.fd = -1


def read_record(path: Path) -> dict:
    """A JSON object file (a lock record, a run's status.json or eval.json); {} when unreadable or not an object."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def busy(holder: dict) -> str:
    """'metarec train (pid 123 on host, since 09:12:03 UTC)' from a lock record."""
    started = holder.get("started")
    since = time.strftime(", since %H:%M:%S UTC", time.gmtime(started)) if isinstance(started, (int, float)) else ""
    who = holder.get("what", "run")
    return f"metarec {who} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}{since})"


def held(folder: Path) -> bool | None:
    """True when a live process holds `folder`'s lock, False when it is free, None when there is no
    lock file or it cannot be tested here (another host's record, a filesystem without flock)."""
    path = folder / LOCK
    record = read_record(path)
    if not path.is_file() or record.get("host") not in (None, socket.gethostname()):
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError as e:
        return True if e.errno in (errno.EWOULDBLOCK, errno.EACCES) else None
    finally:
        os.close(fd)  # drops the shared lock, if taken


def refuse_if_held(folder: Path) -> None:
    """Before Hydra writes .hydra/ into `folder`: refuse in one line when a live run holds it (or,
    for a sweep folder, one of its job folders), so that the live run's records stay untouched."""
    if not folder.is_dir():
        return
    candidates = [folder, *(p.parent for p in folder.glob(f"*/{LOCK}"))]
    for path in candidates:
        if held(path):
            raise UserError(f"{path} is in use by another {busy(read_record(path / LOCK))}: wait for it "
                            f"to end, or choose another run folder")


# What a run or an evaluation leaves in its folder (besides .hydra/, which Hydra writes for every command).
RECORDS = ("checkpoints/last.pt", "checkpoints/best.pt", "metrics.jsonl", "eval.json", "eval.md", "status.json",
           "run_info.json")


def records(folder: Path) -> list[str]:
    """The records of a run that `folder` holds (empty for a new folder)."""
    return [name for name in RECORDS if (folder / name).exists()]


def occupied(folder: Path, found: list[str], advice: str) -> UserError:
    """The refusal of a command that would overwrite another run's records."""
    return UserError(f"{folder} already holds a run ({', '.join(found)}): {advice}")


EVAL_ADVICE = ("metarec eval writes an eval.json, eval.md and .hydra/ of its own: leave hydra.run.dir unset "
               "(a new outputs/DATE/TIME) or choose a new folder")


def precheck(command: str, folder: Path, sweep: bool) -> None:
    """The CLI's check before Hydra writes .hydra/ into an explicitly given run (or sweep) folder:
    refuse a folder a live run holds, and for `metarec eval` a folder that holds a run's records."""
    refuse_if_held(folder)
    if command == "eval" and not sweep and folder.is_dir() and records(folder):
        raise occupied(folder, records(folder), EVAL_ADVICE)
