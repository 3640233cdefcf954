"""RecBole's atomic files, the one parser of the format (data=atomic and data=movielens' atomic copy).

A data set NAME is a folder with NAME.inter (one row per interaction) and optional NAME.user and
NAME.item (one row per user / item). Each file is tab-separated, its first line a typed header of
`name:type` fields, the type one of token, token_seq, float, float_seq; a sequence's elements are
space-separated. An empty value is a missing one. A line whose fields do not match its header is
refused with the file, the line number and the field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import numpy as np

from metarec import inputs
from metarec.errors import UserError

TYPES = ("token", "token_seq", "float", "float_seq")
SEQ_SEPARATOR = " "  # RecBole's default seq_separator


@dataclass
class AtomicFile:
    path: Path
    types: dict[str, str]  # field -> its header type, in header order
    columns: dict[str, list[str]]  # field -> its value on each row, as written
    lines: np.ndarray  # [rows] the 1-based line number of each row
    _parsed: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)  # floats(), once

    def __len__(self) -> int:
        return len(self.lines)

    def floats(self, name: str) -> np.ndarray:
        """A field as float64 [rows] (empty -> nan); a value that is not a number names its line. Parsed
        once (check_types parses every float field, and the readers ask again): a copy each time."""
        if name not in self._parsed:
            col = self.columns[name]
            try:
                self._parsed[name] = np.array(col, dtype=np.float64)
            except ValueError:
                self._parsed[name] = np.array([self._float(name, k, text) for k, text in enumerate(col)], dtype=np.float64)
        return self._parsed[name].copy()

    def numbers(self, name: str) -> np.ndarray:
        """A field read as numbers [rows]: a float field strictly (floats); a token field leniently, a
        value that is not a number missing (RecBole's ml-100k writes release_year "unkonwn")."""
        if self.types[name] != "token":
            return self.floats(name)
        return np.array([_number(text) for text in self.columns[name]], dtype=np.float64)

    def float_seqs(self, name: str) -> list[np.ndarray]:
        return [np.array([self._float(name, k, t) for t in text.split(SEQ_SEPARATOR) if t], dtype=np.float64)
                for k, text in enumerate(self.columns[name])]

    def token_seqs(self, name: str) -> list[list[str]]:
        return [[t for t in text.split(SEQ_SEPARATOR) if t] for text in self.columns[name]]

    def values(self, name: str) -> list | np.ndarray:
        """A field's values by its header type: str, float (nan), list[str] or float64 arrays."""
        kind = self.types[name]
        return {"token": lambda: list(self.columns[name]), "float": lambda: self.floats(name),
                "token_seq": lambda: self.token_seqs(name), "float_seq": lambda: self.float_seqs(name)}[kind]()

    def _float(self, name: str, k: int, text: str) -> float:
        if not text.strip():
            return float("nan")
        try:
            return float(text)
        except ValueError:
            raise UserError(f"{self.path.name} line {self.lines[k]}: field {name} is {text[:40]!r}, not a number "
                            f"(its header says {name}:{self.types[name]}): fix {self.path}") from None

    def check_types(self) -> "AtomicFile":
        """Every float and float_seq field parses (the first bad value names its line and field)."""
        for name, kind in self.types.items():
            if kind == "float":
                self.floats(name)
            elif kind == "float_seq":
                self.float_seqs(name)
        return self


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def read_atomic_file(path: Path) -> AtomicFile:
    """A typed-header atomic file, checked against its header."""
    text = inputs.read_text(path, "atomic file", f"fix {path.name} (RecBole's atomic files are UTF-8 text) or point "
                            "data.root at another copy")  # a byte-order mark is dropped: it is not part of the header
    if not text.strip():
        raise UserError(f"{path} is empty (not even a header line): fix it or point data.root at a complete copy")
    head, _, body = text.partition("\n")
    types = _header(path, head.rstrip("\r"))
    names = list(types)
    regular = _regular_columns(body, len(names))
    if regular is not None:
        columns, numbers = regular
        return AtomicFile(path, types, dict(zip(names, columns)), numbers).check_types()
    lines = text.split("\n")
    rows, numbers = [], []
    for lineno, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) != len(names):
            what = (f"has no {names[len(parts)]} field" if len(parts) < len(names)
                    else f"has a field after {names[-1]}, the header's last")
            raise UserError(f"{path.name} line {lineno} {what} ({len(parts)} tab-separated fields, the header names "
                            f"{len(names)}: {', '.join(names)}): fix {path}")
        rows.append(parts)
        numbers.append(lineno)
    columns = list(zip(*rows)) if rows else [()] * len(names)
    return AtomicFile(path, types, {n: list(c) for n, c in zip(names, columns)},
                      np.asarray(numbers, dtype=np.int64)).check_types()


def _regular_columns(body: str, width: int) -> tuple[list[list[str]], np.ndarray] | None:
    """The columns and line numbers of a body whose every line holds `width` tab-separated fields, with
    no blank line and no carriage return: one split of the whole text, no Python loop over its lines
    (the line loop's lists made reading 2.4 M ratings take 14 s of 27). None: anything else, which the
    line-by-line parse reads (or refuses, naming the line)."""
    body = body.rstrip("\n")
    if not body or body[0] == "\n" or "\r" in body or "\n\n" in body:
        return None
    lines = body.split("\n")
    tabs = np.fromiter(map(str.count, lines, repeat("\t", len(lines))), dtype=np.int64, count=len(lines))
    if (tabs != width - 1).any():
        return None
    del lines
    fields = body.replace("\n", "\t").split("\t")
    return [fields[j::width] for j in range(width)], np.arange(2, len(fields) // width + 2, dtype=np.int64)


def _header(path: Path, line: str) -> dict[str, str]:
    types: dict[str, str] = {}
    for field in line.split("\t"):
        name, _, kind = field.rpartition(":")
        name = name.strip()
        if not name or kind.strip() not in TYPES:
            raise UserError(f"{path.name} line 1: field {field!r} is not a RecBole header field 'name:type' "
                            f"(type one of {', '.join(TYPES)}, fields tab-separated): fix {path}")
        if name in types:
            raise UserError(f"{path.name} line 1: field {name} is named twice in the header: fix {path}")
        types[name] = kind.strip()
    return types


def find_inter(folder: Path, dataset: str | None = None) -> Path:
    """NAME.inter in `folder`: the named data set's, else the only one there."""
    if dataset:
        path = folder / f"{dataset}.inter"
        if not path.exists():  # a FIFO or a device under the name is refused by name when read
            found = ", ".join(p.stem for p in sorted(folder.glob("*.inter"))) or "none"
            raise UserError(f"{path} does not exist (data sets in {folder}: {found}): "
                            f"set data.dataset to one of them, or data.root to the folder that holds {dataset}.inter")
        return path
    inters = sorted(folder.glob("*.inter"))
    if len(inters) != 1:
        raise UserError(
            f"{folder} holds {len(inters)} .inter files ({', '.join(p.name for p in inters) or 'none'}); "
            "RecBole atomic data needs one NAME.inter: point data.root at a folder with one data set "
            "(data=atomic: or name it with data.dataset)"
        )
    return inters[0]


def side_file(inter: Path, kind: str) -> AtomicFile | None:
    """NAME.user or NAME.item beside NAME.inter, read; None when there is none."""
    path = inter.with_suffix(f".{kind}")
    return read_atomic_file(path) if path.exists() else None


def rows_of(table_tokens: list[str], inter_tokens: list[str]) -> tuple[dict[str, int], list[int], list[str]]:
    """Row per id token: the table's rows first (the first of duplicate ids wins), then ids seen only
    in the interactions. Returns (token -> row, table positions of the table rows, tokens by row)."""
    index: dict[str, int] = {}
    positions: list[int] = []
    for pos, t in enumerate(table_tokens):
        if t not in index:
            index[t] = len(index)
            positions.append(pos)
    tokens = list(index)
    for t in dict.fromkeys(inter_tokens):
        if t not in index:
            index[t] = len(index)
            tokens.append(t)
    return index, positions, tokens
