"""SIGINT / SIGTERM during a run: in the training loop the first one lets the current step finish,
saves last.pt and stops; during an evaluation (a validation inside the loop, or `metarec eval`) it
takes effect at the next chunk of tasks (between_chunks), before anything of that evaluation is
written; a second one, or one outside these, stops at once. Where no safe point comes within GRACE_S
(one long torch or numpy call), a watchdog makes the stop. Either way the run ends with one line that
says what was saved and how to resume (metarec/run/resume.py, stopped), and exits 128 + the signal."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time


class Interrupted(BaseException):
    """SIGINT / SIGTERM: `phase` says where the run stopped (start, train, second, final). A BaseException,
    as KeyboardInterrupt is: an `except Exception` around a read or a download must not swallow a stop."""

    def __init__(self, signum: int, phase: str):
        self.signum, self.phase = signum, phase


DEFERRED = ("train", "validation", "eval")  # phases where a first signal waits for a safe point
GRACE_S = 3.0  # a stop that finds no safe point within this long (a long torch or numpy call) is made at once


class SignalCatcher:
    """Takes SIGINT / SIGTERM over until restore(); `phase` is set by the trainer as it goes (start,
    train, validation, final; eval for `metarec eval`); `beat` keeps the run's heartbeat between chunks.

    Python runs a signal handler only between bytecodes of the main thread, so one long torch or numpy
    call (a chunk of evaluation tasks on a slow machine: 100 s measured) would delay any stop. A
    watchdog thread learns of the signal at once (signal.set_wakeup_fd writes it from C) and, when the
    run has not stopped GRACE_S later, makes the stop itself: `deadline(signum, phase)` records it as the
    run's own stop would (a command sets it; it returns the exit code), then the process exits."""

    def __init__(self, phase: str = "start"):
        global _ACTIVE
        self.caught: int | None = None
        self.phase = phase
        self.beat = None  # RunFolder.beat, called between evaluation chunks
        self.deadline = None  # (signum, phase) -> exit code: what a stop made by the watchdog records
        self.ending = False  # the stop is being recorded (by the run, or by the watchdog)
        _ACTIVE = self
        self._old = {}
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (a launcher's worker): leave signals alone
                pass
        self._wake = self._watch() if self._old else None

    def _watch(self) -> int | None:
        """Start the watchdog: a pipe the C-level handler writes each signal's number to."""
        read, write = os.pipe()
        os.set_blocking(write, False)
        try:
            self._old_wake = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        except ValueError:
            os.close(read)
            os.close(write)
            return None
        self._restored = threading.Event()  # wakes the watchdog out of its grace period
        self._thread = threading.Thread(target=self._watchdog, args=(read,), daemon=True, name="metarec-stop-watchdog")
        self._thread.start()
        return write

    def _watchdog(self, read: int) -> None:
        with os.fdopen(read, "rb", buffering=0) as pipe:
            while (got := pipe.read(1)):
                if got[0] not in (signal.SIGINT, signal.SIGTERM):
                    continue
                if self._restored.wait(GRACE_S) or _ACTIVE is not self:  # restored: the run stopped (or ended) by itself
                    return
                self._stop_now(got[0])

    def _stop_now(self, signum: int) -> None:
        if self.ending:  # the run is recording its own stop: give it the time to end
            time.sleep(GRACE_S)
            if _ACTIVE is self:
                os._exit(128 + signum)
            return
        self.ending = True
        code = 128 + signum
        try:
            if self.deadline is not None:
                code = self.deadline(signum, "second" if self.phase == "train" else self.phase)  # mid-step: at once
            else:
                print(f"metarec: {signal.Signals(signum).name}: stopped at once (nothing of this command "
                      f"was finished)", file=sys.stderr, flush=True)
        finally:
            os._exit(code)

    def _handle(self, signum, _frame):
        if self.phase not in DEFERRED:
            raise Interrupted(signum, self.phase)
        if self.caught is not None:
            raise Interrupted(signum, "second")
        self.caught = signum

    def restore(self) -> None:
        global _ACTIVE
        if _ACTIVE is self:
            _ACTIVE = None
        if self._wake is not None:
            self._restored.set()
            signal.set_wakeup_fd(self._old_wake)
            os.close(self._wake)  # the watchdog reads the end of its pipe and returns
            self._wake = None
            # wait for it: a daemon thread that wakes while the interpreter finalizes exits through
            # pthread_exit, and libstdc++ aborts the process ("terminate called without an active
            # exception", exit -6 after the command's own line; 1 in 16-30 error exits measured)
            if self._thread is not threading.current_thread():
                self._thread.join(timeout=GRACE_S + 1.0)
        for s, h in self._old.items():
            signal.signal(s, h)


_ACTIVE: SignalCatcher | None = None


def claim_stop() -> None:
    """A command that is about to record its own stop calls this: the watchdog then records nothing."""
    if _ACTIVE is not None:
        _ACTIVE.ending = True


def between_chunks() -> None:
    """Evaluation calls this between chunks of tasks: the heartbeat, and a stop request takes effect
    here (a validation in the training loop stops without writing anything; last.pt holds the
    previous validation's step)."""
    c = _ACTIVE
    if c is None:
        return
    if c.beat is not None:
        c.beat()
    if c.caught is not None and c.phase in DEFERRED:
        raise Interrupted(c.caught, "eval" if c.phase == "eval" else "validation")


def check_stop() -> None:
    """For any long loop outside a training step (floors and factor fits, data reading, evaluation): a
    stop request that the phase deferred takes effect here (a validation, `metarec eval`); in the other phases the
    signal has stopped the run already, at once. The heartbeat at most once a second."""
    global _LAST_BEAT
    c = _ACTIVE
    if c is None:
        return
    now = time.monotonic()
    if c.beat is not None and now - _LAST_BEAT >= 1.0:
        _LAST_BEAT = now
        c.beat()
    if c.caught is not None and c.phase in ("validation", "eval"):
        raise Interrupted(c.caught, c.phase)


_LAST_BEAT = 0.0


EXIT_AT_ONCE = False  # the console script sets it: a recorded stop ends the process (in-process callers keep theirs)


def exit_now(code: int) -> None:
    """With EXIT_AT_ONCE, end the process now that its stop is recorded and said: unwinding and the interpreter's
    teardown (freeing a data set's tensors and objects) took 4-8 s of a stop on a loaded machine."""
    if EXIT_AT_ONCE:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
