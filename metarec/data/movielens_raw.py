"""The rating table every MovieLens reader returns (MovieLensRaw: a RatingTable with MovieLens' user and
item columns), the definition of an item's year, and the parsing the readers share (ratings fast path,
checks, small '|' or '::' tables)."""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metarec import inputs
from metarec.data.ratings import RatingTable
from metarec.errors import UserError

RATING_MIN, RATING_MAX = 1.0, 5.0
REREAD = "re-download it (or the data set), or point data.root at a complete copy"


@dataclass
class MovieLensRaw(RatingTable):
    """The rating table (rows into the user and item tables below) with MovieLens' own columns."""
    user_gender: list[str]     # [U] "M"/"F"
    user_age: np.ndarray       # [U] int64 (ml-100k: years; ml-1m: GroupLens age code 1/18/25/...)
    user_occupation: list[str] # [U] (ml-1m: the numeric code as a string)
    user_zip: list[str]        # [U]
    item_year: np.ndarray      # [I] int64 the title's year (title_year), -1 when unknown
    item_genres: list[list[str]]  # [I] genre names (e.g. "Comedy", "Children's")
    item_title: list[str]      # [I]
    item_id: np.ndarray | None = None  # [I] the data set's own item ids (recommend shows them)


# ----------------------------------------------------------------------------- an item's year

# An item's year is the year in its title, "Toy Story (1995)" -> 1995: every copy carries it (ml-100k's
# u.item, RecBole's ml-100k.item, whose release_year column is cut from the title, and ml-1m's
# movies.dat, which has nothing else), so every copy of a data set makes the same new/existing split.
# u.item's release dates are not used: RecBole's copy does not have them, and they differ from the
# title for 192 of 1,682 items. The last "(yyyy)" counts, so "Land Before Time III ... (1995) (V)"
# is 1995 (RecBole's file puts "V" in release_year for it and keeps "(1995)" in the title). A title
# without one ("unknown", ml-100k item 267, the one item without a release date too) has no year: -1.
_TITLE_YEAR = re.compile(r".*\((\d{4})\)")


def title_year(title: str) -> int:
    """An item's year: the last "(yyyy)" in its title, -1 when it has none."""
    m = _TITLE_YEAR.match(title)
    return int(m.group(1)) if m else -1


def year_field(text: str) -> int:
    """A year column's value ("1995"), -1 when it is not a year (RecBole writes "unkonwn")."""
    text = text.strip()
    return int(text) if text.isdigit() else -1


def existing_folder(folder: str | Path) -> Path:
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise UserError(f"data folder {folder} does not exist: check data.root (or leave it unset to download)")
    return inputs.folder(folder, "data folder", "point data.root at the folder holding the data")


# ----------------------------------------------------------------------------- ratings (fast path)

def parse_ratings(path: Path, sep: bytes) -> tuple[np.ndarray, np.ndarray]:
    """`user item rating timestamp` lines -> ([R, 4] float64 values, [R] 1-based line numbers).

    Fast path: one numpy parse of the whole file, accepted only when every line has exactly four
    fields; anything else goes through the per-line parser, which names the first bad line.
    """
    data = inputs.text_bytes(path, "data file", REREAD, "latin-1")
    if not data.strip():
        raise UserError(f"{path} is empty (no ratings): a copy cut short? Re-download it (or the data set), "
                        f"or point data.root at a complete copy")
    if sep != b"\t":
        data = data.replace(sep, b"\t")
    values = _fast_table(data, fields=4)
    if values is not None:
        return values, np.arange(1, len(values) + 1, dtype=np.int64)
    rows, lines = [], []
    text = data.decode("latin-1")
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        parts = line.rstrip("\r").split("\t")
        try:
            if len(parts) != 4:
                raise ValueError
            row = [float(p) for p in parts]
        except ValueError:
            shown = line.strip().replace("\t", sep.decode())[:60]
            fields = "tab" if sep == b"\t" else f"'{sep.decode()}'"
            raise UserError(
                f"{path.name} line {lineno} is malformed ({shown!r}; expected four {fields}-separated numbers: "
                f"user, item, rating, timestamp): fix or re-download {path}"
            ) from None
        rows.append(row)
        lines.append(lineno)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4), np.asarray(lines, dtype=np.int64)


def _fast_table(data: bytes, fields: int) -> np.ndarray | None:
    """Tab-separated all-numeric lines -> [lines, fields] float64, or None if any line is odd."""
    if not data:
        return np.zeros((0, fields))
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    if not data.endswith(b"\n"):
        ends = np.append(ends, len(buf))
    tabs = np.flatnonzero(buf == ord("\t"))
    tabs_per_line = np.diff(np.searchsorted(tabs, ends), prepend=0)
    if not np.all(tabs_per_line == fields - 1):  # also catches blank lines
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # older numpy warns instead of raising on junk
            flat = np.fromstring(data, dtype=np.float64, sep=" ")  # any whitespace separates
    except (ValueError, DeprecationWarning):
        return None
    if flat.size != fields * len(ends):
        return None
    return flat.reshape(-1, fields)


def check_ratings(path: Path, values: np.ndarray, lines: np.ndarray) -> None:
    ids_ts = values[:, [0, 1, 3]]
    bad = ~np.isfinite(ids_ts).all(axis=1) | (ids_ts != np.round(ids_ts)).any(axis=1)
    if bad.any():
        k = int(np.argmax(bad))
        raise UserError(
            f"{path.name} line {lines[k]} has a non-integer user, item or timestamp "
            f"({values[k, 0]:g}, {values[k, 1]:g}, {values[k, 3]:g}): fix or re-download {path}"
        )
    r = values[:, 2]
    off = ~((r >= RATING_MIN) & (r <= RATING_MAX))  # also catches nan
    if off.any():
        k = int(np.argmax(off))
        raise UserError(
            f"{path.name} line {lines[k]} has rating {r[k]:g}, off the {RATING_MIN:g}-{RATING_MAX:g} scale: "
            f"fix or re-download {path}"
        )


def _rows_for_ids(path: Path, what: str, ids: np.ndarray, lines: np.ndarray, table_ids: np.ndarray) -> np.ndarray:
    """Map raw integer ids to table rows; a rating that names an unknown id is a user error."""
    lo = min(int(ids.min(initial=0)), int(table_ids.min(initial=0)), 0)
    hi = max(int(ids.max(initial=0)), int(table_ids.max(initial=0)))
    lookup = np.full(hi - lo + 1, -1, dtype=np.int64)
    lookup[table_ids - lo] = np.arange(len(table_ids), dtype=np.int64)
    rows = lookup[ids - lo]
    if (rows < 0).any():
        k = int(np.argmax(rows < 0))
        raise UserError(
            f"{path.name} line {lines[k]} names {what} {ids[k]}, which is not in the {what} table: "
            "the files do not belong together; re-download the data set"
        )
    return rows


def keep_last(user: np.ndarray, item: np.ndarray, num_items: int) -> np.ndarray:
    """Indices of the ratings to keep: the last one of each (user, item) pair, in file order."""
    key = user * max(num_items, 1) + item
    _, first_from_end = np.unique(key[::-1], return_index=True)
    if len(first_from_end) == len(key):
        return np.arange(len(key))
    return np.sort(len(key) - 1 - first_from_end)


def assemble(ratings_path: Path, values: np.ndarray, lines: np.ndarray, user_ids: np.ndarray,
              item_ids: np.ndarray, tables: dict, source_files: list[Path]) -> MovieLensRaw:
    check_ratings(ratings_path, values, lines)
    ids = values[:, [0, 1, 3]].astype(np.int64)
    user = _rows_for_ids(ratings_path, "user", ids[:, 0], lines, user_ids)
    item = _rows_for_ids(ratings_path, "item", ids[:, 1], lines, item_ids)
    keep = keep_last(user, item, len(item_ids))
    return MovieLensRaw(
        rating_user=user[keep], rating_item=item[keep],
        rating=values[keep, 2].astype(np.float32), timestamp=ids[keep, 2],
        num_users=len(user_ids), num_items=len(item_ids), source_files=source_files, item_id=item_ids, **tables,
    )


def split_lines(path: Path, sep: str, fields: int) -> list[tuple[int, list[str]]]:
    """Small '|' or '::' tables (users, items): [(1-based line, fields)], blank lines skipped."""
    out = []
    text = inputs.read_text(path, "data file", REREAD, "latin-1")
    if not text.strip():
        raise UserError(f"{path} is empty: a copy cut short? Re-download it (or the data set), or point data.root "
                        f"at a complete copy")
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) != fields:
            raise UserError(
                f"{path.name} line {lineno} is malformed (expected {fields} '{sep}'-separated fields, "
                f"found {len(parts)}): fix or re-download {path}"
            )
        out.append((lineno, parts))
    return out


def int_field(path: Path, lineno: int, what: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{path.name} line {lineno} has {what} {text!r}, not an integer: fix or re-download {path}") from None
