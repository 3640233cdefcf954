"""SIGINT / SIGTERM during a run: in the training loop the first one lets the current step finish,
saves last.pt and stops; during an evaluation (a validation inside the loop, or `metarec eval`) it
takes effect at the next chunk of tasks (between_chunks), before anything of that evaluation is
written; a second one, or one outside these, stops at once. Either way the run ends with one line
that says what was saved and how to resume, and exits 128 + the signal."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

from metarec import checkpoint
from metarec.errors import UserError
from metarec.resume import resume_command
from metarec.run_folder import RunFolder


class Interrupted(Exception):
    """SIGINT / SIGTERM: `phase` says where the run stopped (start, train, second, final)."""

    def __init__(self, signum: int, phase: str):
        self.signum, self.phase = signum, phase


class SignalCatcher:
    """Takes SIGINT / SIGTERM over until restore(); `phase` is set by the trainer as it goes (start,
    train, final; eval for `metarec eval`); `beat` keeps the run's heartbeat between chunks."""

    def __init__(self, phase: str = "start"):
        global _ACTIVE
        self.caught: int | None = None
        self.phase = phase
        self.beat = None  # RunFolder.beat, called between evaluation chunks
        _ACTIVE = self
        self._old = {}
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (a launcher's worker): leave signals alone
                pass

    def _handle(self, signum, _frame):
        if self.phase not in ("train", "eval"):
            raise Interrupted(signum, self.phase)
        if self.caught is not None:
            raise Interrupted(signum, "second")
        self.caught = signum

    def restore(self) -> None:
        global _ACTIVE
        for s, h in self._old.items():
            signal.signal(s, h)
        if _ACTIVE is self:
            _ACTIVE = None


_ACTIVE: SignalCatcher | None = None


def between_chunks() -> None:
    """Evaluation calls this between chunks of tasks: the heartbeat, and a stop request takes effect
    here (a validation in the training loop stops without writing anything; last.pt holds the
    previous validation's step)."""
    c = _ACTIVE
    if c is None:
        return
    if c.beat is not None:
        c.beat()
    if c.caught is not None and c.phase in ("train", "eval"):
        raise Interrupted(c.caught, "validation" if c.phase == "train" else "eval")


def stopped(e: Interrupted, run: RunFolder | None, run_dir: Path, step: int) -> int:
    """The one line an interrupted run prints, its status.json, and its exit code (128 + signal)."""
    name = signal.Signals(e.signum).name
    last = run.saved.get("last.pt") if run is not None else None
    path = (run.path if run is not None else run_dir) / "checkpoints" / "last.pt"
    if last is None and path.exists():
        last = "?"  # resumed from it, then stopped before writing a new one
        try:
            last = checkpoint.load(path)["step"]
        except UserError:
            pass
    what = {"start": "stopped before training started",
            "train": f"stopped after step {step}",
            "second": f"stopped at once during step {step + 1}",
            "validation": f"stopped during the validation after step {step}",
            "eval": "stopped during the evaluation, before writing it",
            "final": "stopped during the final evaluation (training is complete)"}[e.phase]
    if path.exists():
        line = f"{what}; {path} holds step {last}; resume with: {resume_command(run_dir)}"
    else:
        line = f"{what}; nothing was saved: run the same command again to start over"
    if run is not None:
        try:
            run.status("interrupted", step, f"{name}: {what}" + ("; resume with trainer.resume=auto" if path.exists() else ""))
        except Exception:  # noqa: BLE001 - a full disk: the console line is what matters
            pass
    print(f"metarec: {name}: {line}", file=sys.stderr, flush=True)
    return 128 + e.signum
