"""Progress lines for the long phases besides meta-training (data decoding, factor fits, evaluation,
the floors): one tqdm bar each, with its rate, on stderr; trainer.progress=false turns them all off.
A phase that will take over a minute also says so once in the log, bar or not: how long, at what
rate, on this device (Omniglot's 600 test tasks take minutes on a CPU).

The switch is process-wide (`show`), set where a command reads its config (train, eval), so that
the phases deep in data and evaluation code need no flag passed down to them.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable

from tqdm import tqdm

log = logging.getLogger("metarec")
_ENABLED = True
LONG_S = 60.0  # a phase projected to take longer than this says so in the log
EVAL_HINT = "fewer tasks: data.n_test_tasks / data.n_val_tasks (sinusoid, Omniglot), or a GPU (device=cuda)"


def show(enabled: bool) -> None:
    """Turn every phase's bar on or off (trainer.progress; off on ranks other than 0)."""
    global _ENABLED
    _ENABLED = bool(enabled)


def bar(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
        enabled: bool = True) -> tqdm:
    """A bar for one phase (leave=False: it clears when done), over `iterable` or moved by update()."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not (enabled and _ENABLED), leave=False,
                dynamic_ncols=True, mininterval=1.0)


class Phase:
    """A bar (when enabled) and, once the first part is done, one log line when the whole phase is
    projected to take longer than LONG_S: '{desc}: 600 tasks, about 12 min at 0.8 tasks/s; {hint}'."""

    def __init__(self, total: int, desc: str, unit: str = "it", hint: str = "", enabled: bool = True):
        self.total, self.desc, self.unit, self.hint = total, desc, unit, hint
        self.bar = bar(total=total, desc=desc, unit=unit, enabled=enabled)
        self.start, self.done, self.said = time.perf_counter(), 0, False

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.done += n
        elapsed = time.perf_counter() - self.start
        if not self.said and self.done < self.total and elapsed > 0:
            self.said = True
            rate = self.done / elapsed
            if self.total / rate > LONG_S:
                log.info("%s: %d %ss, about %.0f min at %.1f %ss/s on this device%s", self.desc, self.total, self.unit,
                         self.total / rate / 60, rate, self.unit, f"; {self.hint}" if self.hint else "")

    def close(self) -> None:
        self.bar.close()
