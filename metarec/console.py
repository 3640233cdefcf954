"""The `metarec` console script's entry: SIGINT / SIGTERM while the command's modules are imported (Hydra,
torch: a second or more) end it with one line instead of a traceback; then metarec.cli takes over."""
from __future__ import annotations

import os
import signal
import sys


def _stopped(signum, _frame) -> None:
    print(f"metarec: {signal.Signals(signum).name}: stopped before it started", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def main() -> int:
    previous = {s: signal.signal(s, _stopped) for s in (signal.SIGINT, signal.SIGTERM)}
    from metarec.cli import main as cli_main
    for s, handler in previous.items():
        signal.signal(s, handler)
    return cli_main()
