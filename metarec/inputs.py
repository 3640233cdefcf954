"""What a path the user gives must be before metarec opens it: a regular file within a stated size (text in
its format's encoding where text is expected) or a folder; anything else is refused in one line naming it."""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from metarec.errors import UserError

MIB, GIB = 1 << 20, 1 << 30
# Bounds far above any real file of the kind and far below what would exhaust a machine's memory.
RATINGS_MAX = 64 * MIB  # `metarec recommend ratings=`: one new user's ratings
CHECKPOINT_MAX = 16 * GIB  # checkpoint=: a metarec checkpoint (ml-1m's are a few MB)
DATA_MAX = 4 * GIB  # one data file (ml-1m's ratings.dat is 24 MB, ml-20m's ratings.csv 0.5 GB)

# Control bytes no text format of ours holds (tab, line feed, form feed, carriage return and escape are allowed).
_CONTROL = bytes([*range(0, 9), 11, *range(14, 27), *range(28, 32)])
_BINARY = re.compile(b"[" + re.escape(_CONTROL) + b"]")


def _size(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / MIB:.1f} MiB" if n >= MIB else f"{n:,} bytes"


def kind_of(mode: int) -> str:
    """What a stat mode is, in words: 'a regular file', 'a folder', 'a FIFO (named pipe)', ..."""
    for test, name in ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file or folder"


def _stat(path: Path, what: str, advice: str) -> os.stat_result:
    """os.stat, which opens nothing (a FIFO or a device cannot block or stream here)."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist: {advice}") from None
    except OSError as e:  # a symlink loop, a name too long, a folder we may not search
        raise UserError(f"{what} {path} cannot be looked at ({e.strerror or e}): {advice}") from None


def regular_file(path: str | Path, what: str, advice: str, limit: int = DATA_MAX) -> Path:
    """`path` if it is a regular file of at most `limit` bytes; else one line naming what it is."""
    path = Path(path)
    st = _stat(path, what, advice)
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {path} is {kind_of(st.st_mode)}, not a regular file: {advice}")
    if st.st_size > limit:
        raise UserError(f"{what} {path} is too large ({_size(st.st_size)}; at most {_size(limit)} is read): {advice}")
    return path


def folder(path: str | Path, what: str, advice: str) -> Path:
    """`path` if it is a folder; else one line naming what it is."""
    path = Path(path)
    st = _stat(path, what, advice)
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {path} is {kind_of(st.st_mode)}, not a folder: {advice}")
    return path


def read_bytes(path: str | Path, what: str, advice: str, limit: int = DATA_MAX) -> bytes:
    """A regular file's bytes, never more than `limit` of them (a /proc file claims size 0 and streams)."""
    path = regular_file(path, what, advice, limit)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise UserError(f"{what} {path} cannot be read ({e.strerror or e}): {advice}") from None
    if len(data) > limit:
        raise UserError(f"{what} {path} is too large (over {_size(limit)}, the most that is read): {advice}")
    return data


def text_bytes(path: str | Path, what: str, advice: str, encoding: str = "utf-8", limit: int = DATA_MAX) -> bytes:
    """A text file's bytes, refused when they hold control bytes (a binary file) or do not decode in `encoding`."""
    data = read_bytes(path, what, advice, limit)
    found = len(data.translate(None, _CONTROL)) != len(data) and _BINARY.search(data)  # translate: 4x faster
    if found:
        line = data.count(b"\n", 0, found.start()) + 1
        raise UserError(f"{what} {path} is a binary file, not text (byte 0x{data[found.start()]:02x} on line {line}): "
                        f"{advice}")
    try:
        if encoding != "latin-1":  # every byte is a latin-1 character: nothing to check
            data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{what} {path} is not {encoding.upper()} text (byte 0x{data[e.start]:02x} on line {line} does not "
                        f"decode): save it as {encoding.upper()}, or {advice}") from None
    return data


def read_text(path: str | Path, what: str, advice: str, encoding: str = "utf-8", limit: int = DATA_MAX) -> str:
    """A text file's content (see text_bytes); a UTF-8 byte-order mark is dropped."""
    data = text_bytes(path, what, advice, encoding, limit)
    return data.decode("utf-8-sig" if encoding == "utf-8" else encoding)
