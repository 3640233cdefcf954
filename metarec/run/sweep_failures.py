"""How a multirun ended, for every launcher and sweeper alike: the jobs this invocation wrote whose run
folder does not say finished, counted in one line that names where their errors are.

Joblib, submitit (local or Slurm) and Optuna run jobs in other processes or on other hosts, so the
count is read from the sweep folder (each job's status.json), not from the process that launched them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from metarec.run.run_lock import read_record

SHOWN = 5  # failed folders named in the line; the rest are counted
MARKS = ".failed"  # SWEEP/.failed/NUM.json: a job's own record that it failed (see mark)
ENDED: list[Failures] = []  # what each multirun of this process ended with (the CLI reads the last)


@dataclass
class Failures:
    """A multirun's jobs (their folders) and those of them that did not finish."""
    sweep: Path
    jobs: list[Path] = field(default_factory=list)
    failed: list[Path] = field(default_factory=list)
    said: dict[Path, str] = field(default_factory=dict)  # folder -> the reason its job's mark gives

    def line(self) -> str:
        """One line: how many failed, where their errors are (empty when none failed)."""
        if not self.failed:
            return ""
        named = ", ".join(str(p) for p in self.failed[:SHOWN])
        more = f" and {len(self.failed) - SHOWN} more" if len(self.failed) > SHOWN else ""
        logs = self.sweep / ".submitit"
        launcher = f"; the launcher's logs are in {logs}" if logs.is_dir() else ""
        first = self.said.get(self.failed[0]) or reason_of(self.failed[0])
        return (f"{len(self.failed)} of {len(self.jobs)} job(s) of the sweep failed: the status.json and train.log "
                f"of {named}{more} say why{launcher}" + (f" (the first: {first})" if first else ""))


def job_folders(sweep: Path) -> dict[Path, tuple[int | None, int | None]]:
    """Every job folder under the sweep folder (one with .hydra/ or status.json) -> the modification
    times of its .hydra/overrides.yaml and status.json (None where absent)."""
    found = {p.parent for p in sweep.glob("**/.hydra")} | {p.parent for p in sweep.glob("**/status.json")}
    return {f: (_mtime(f / ".hydra" / "overrides.yaml"), _mtime(f / "status.json")) for f in found}


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None



def _record(folder: Path) -> dict:
    return read_record(folder / "status.json")


def status_of(folder: Path) -> str | None:
    return _record(folder).get("status")


def reason_of(folder: Path) -> str:
    """Why the job in `folder` did not finish, as its status.json says (or what the record lacks)."""
    doc = _record(folder)
    if not doc:
        return "no status.json: the job ended before its run folder had a record"
    if doc.get("status") == "running":
        return f"status.json still says running at step {doc.get('step')}: its process died"
    return str(doc.get("reason") or doc.get("status"))


def mark(sweep: Path, job: int, folder: Path, reason: str) -> None:
    """A job's own word that it failed (written by the job, wherever it runs): SWEEP/.failed/NUM.json.
    A job refused before it could write its status.json (another run's record in its folder) counts too."""
    marks = sweep / MARKS
    try:
        marks.mkdir(parents=True, exist_ok=True)
        (marks / f"{job}.json").write_text(json.dumps({"folder": str(folder), "reason": reason}) + "\n")
    except OSError:
        pass  # an unwritable sweep folder: its status.json, where written, still counts


def marked(sweep: Path) -> dict[Path, int | None]:
    """SWEEP/.failed/*.json -> their modification times."""
    return {p: _mtime(p) for p in (sweep / MARKS).glob("*.json")}


def count(sweep: Path, before: dict[Path, tuple[int | None, int | None]], marks_before: dict | None = None) -> Failures:
    """The jobs this multirun wrote (folders new or changed since `before`) and those that failed: a
    mark written since `marks_before`, or a status.json that is not "finished" (failed, interrupted,
    still "running" after the sweep ended: its process died; absent: it ended before its folder had one)."""
    now = job_folders(sweep)
    jobs = {f for f, stamp in now.items() if before.get(f) != stamp}
    said = {}
    real = {f.resolve(): f for f in now}  # a mark names its folder absolute, the sweep folder may be relative
    for path, stamp in marked(sweep).items():
        if (marks_before or {}).get(path) != stamp:
            doc = read_record(path)
            folder = Path(doc.get("folder", sweep / path.stem))
            said[real.get(folder.resolve(), folder)] = str(doc.get("reason", "failed"))
    jobs = sorted(jobs | said.keys(), key=_job_order)
    failed = [f for f in jobs if f in said or status_of(f) != "finished"]
    return Failures(sweep, jobs, failed, said)


def _job_order(folder: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in folder.parts)  # 2 before 10


class SweepFailures(Callback):
    """conf/config.yaml's hydra.callbacks: notes the sweep folder's job folders when a multirun starts
    and counts the failed ones when it ends (in the launching process, whichever launcher ran them)."""

    def __init__(self) -> None:
        self.sweep: Path | None = None
        self.before: dict[Path, tuple[int | None, int | None]] = {}
        self.marks: dict[Path, int | None] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # the ${now:...} of the sweep folder is cached on this config, so the launcher resolves the same folder
        self.sweep = Path(str(config.hydra.sweep.dir))
        self.before, self.marks = job_folders(self.sweep), marked(self.sweep)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.sweep is not None:
            ENDED.append(count(self.sweep, self.before, self.marks))
