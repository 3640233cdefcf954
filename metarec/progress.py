"""Progress lines for the long phases besides meta-training (data decoding, factor fits, evaluation,
the floors): one tqdm bar each, with its rate, on stderr; trainer.progress=false turns them all off.

The switch is process-wide (`show`), set where a command reads its config (train, eval), so that
the phases deep in data and evaluation code need no flag passed down to them.
"""
from __future__ import annotations

from typing import Iterable

from tqdm import tqdm

_ENABLED = True


def show(enabled: bool) -> None:
    """Turn every phase's bar on or off (trainer.progress; off on ranks other than 0)."""
    global _ENABLED
    _ENABLED = bool(enabled)


def bar(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
        enabled: bool = True) -> tqdm:
    """A bar for one phase (leave=False: it clears when done), over `iterable` or moved by update()."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not (enabled and _ENABLED), leave=False,
                dynamic_ncols=True, mininterval=1.0)
