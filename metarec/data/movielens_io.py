"""Readers for MovieLens on disk: GroupLens ml-100k, GroupLens ml-1m and RecBole atomic files.

Each reader returns the same plain `MovieLensRaw` tables; `read_movielens(folder)` picks the reader.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metarec.errors import UserError

# The order of the 19 flags at the end of each u.item line (u.genre lists the same order).
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]
RATING_MIN, RATING_MAX = 1.0, 5.0

# What each format is recognised by, and what it needs; used in error messages too.
FORMAT_FILES = {
    "ml-100k": ["u.data", "u.user", "u.item"],
    "ml-1m": ["ratings.dat", "users.dat", "movies.dat"],
    "atomic": ["NAME.inter", "NAME.user (optional)", "NAME.item (optional)"],
}
EXPECTED_HINT = (
    "expected ml-100k (u.data, u.user, u.item), ml-1m (ratings.dat, users.dat, movies.dat) "
    "or RecBole atomic files (one NAME.inter, optional NAME.user, NAME.item)"
)

_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")


@dataclass
class MovieLensRaw:
    rating_user: np.ndarray    # [R] int64, row into the user table
    rating_item: np.ndarray    # [R] int64, row into the item table
    rating: np.ndarray         # [R] float32
    timestamp: np.ndarray      # [R] int64
    user_gender: list[str]     # [U] "M"/"F"
    user_age: np.ndarray       # [U] int64 (ml-100k: years; ml-1m: GroupLens age code 1/18/25/...)
    user_occupation: list[str] # [U] (ml-1m: the numeric code as a string)
    user_zip: list[str]        # [U]
    item_year: np.ndarray      # [I] int64 release year, -1 when unknown
    item_genres: list[list[str]]  # [I] genre names (e.g. "Comedy", "Children's")
    item_title: list[str]      # [I]
    source_files: list[Path]   # the files read, for the data fingerprint

    @property
    def num_users(self) -> int:
        return len(self.user_gender)

    @property
    def num_items(self) -> int:
        return len(self.item_title)


# ----------------------------------------------------------------------------- format detection

def detect_format(folder: str | Path) -> str | None:
    """'ml-100k', 'ml-1m' or 'atomic' when `folder` holds that format's files, else None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if all((folder / f).is_file() for f in FORMAT_FILES["ml-100k"]):
        return "ml-100k"
    if all((folder / f).is_file() for f in FORMAT_FILES["ml-1m"]):
        return "ml-1m"
    if len(list(folder.glob("*.inter"))) == 1:
        return "atomic"
    return None


def read_movielens(folder: str | Path) -> MovieLensRaw:
    """Read whichever MovieLens format `folder` holds (ml-100k, ml-1m or RecBole atomic)."""
    folder = _existing_folder(folder)
    fmt = detect_format(folder)
    if fmt == "ml-100k":
        return read_ml100k(folder)
    if fmt == "ml-1m":
        return read_ml1m(folder)
    if fmt == "atomic":
        return read_atomic(folder)
    present = sorted(p.name for p in folder.iterdir())[:8]
    raise UserError(
        f"{folder} holds no MovieLens data ({EXPECTED_HINT}; found: {', '.join(present) or 'nothing'}): "
        "point data.root at the folder that holds those files"
    )


def _existing_folder(folder: str | Path) -> Path:
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise UserError(f"data folder {folder} does not exist: check data.root (or leave it unset to download)")
    if not folder.is_dir():
        raise UserError(f"data folder {folder} is a file, not a folder: point data.root at the folder holding the data")
    return folder


def _require(folder: Path, names: list[str], fmt: str) -> list[Path]:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise UserError(
            f"{folder} is missing {', '.join(missing)} (a {fmt} folder needs {', '.join(names)}): "
            "point data.root at a complete copy or delete it to re-download"
        )
    return [folder / n for n in names]


# ----------------------------------------------------------------------------- ratings (fast path)

def _parse_ratings(path: Path, sep: bytes) -> tuple[np.ndarray, np.ndarray]:
    """`user item rating timestamp` lines -> ([R, 4] float64 values, [R] 1-based line numbers).

    Fast path: one numpy parse of the whole file, accepted only when every line has exactly four
    fields; anything else goes through the per-line parser, which names the first bad line.
    """
    data = path.read_bytes()
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


def _check_ratings(path: Path, values: np.ndarray, lines: np.ndarray) -> None:
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


def _keep_last(user: np.ndarray, item: np.ndarray, num_items: int) -> np.ndarray:
    """Indices of the ratings to keep: the last one of each (user, item) pair, in file order."""
    key = user * max(num_items, 1) + item
    _, first_from_end = np.unique(key[::-1], return_index=True)
    if len(first_from_end) == len(key):
        return np.arange(len(key))
    return np.sort(len(key) - 1 - first_from_end)


def _assemble(ratings_path: Path, values: np.ndarray, lines: np.ndarray, user_ids: np.ndarray,
              item_ids: np.ndarray, tables: dict, source_files: list[Path]) -> MovieLensRaw:
    _check_ratings(ratings_path, values, lines)
    ids = values[:, [0, 1, 3]].astype(np.int64)
    user = _rows_for_ids(ratings_path, "user", ids[:, 0], lines, user_ids)
    item = _rows_for_ids(ratings_path, "item", ids[:, 1], lines, item_ids)
    keep = _keep_last(user, item, len(item_ids))
    return MovieLensRaw(
        rating_user=user[keep], rating_item=item[keep],
        rating=values[keep, 2].astype(np.float32), timestamp=ids[keep, 2],
        source_files=source_files, **tables,
    )


def _split_lines(path: Path, sep: str, fields: int) -> list[tuple[int, list[str]]]:
    """Small '|' or '::' tables (users, items): [(1-based line, fields)], blank lines skipped."""
    out = []
    for lineno, line in enumerate(path.read_text(encoding="latin-1").split("\n"), start=1):
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


def _int_field(path: Path, lineno: int, what: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{path.name} line {lineno} has {what} {text!r}, not an integer: fix or re-download {path}") from None


def _year(text: str) -> int:
    text = text.strip()
    return int(text) if text.isdigit() else -1


# ----------------------------------------------------------------------------- ml-100k

def read_ml100k(folder: str | Path) -> MovieLensRaw:
    """GroupLens ml-100k: u.data (tab), u.user and u.item ('|', u.item latin-1)."""
    folder = _existing_folder(folder)
    data_path, user_path, item_path = _require(folder, FORMAT_FILES["ml-100k"], "ml-100k")

    users = _split_lines(user_path, "|", 5)
    user_ids = np.array([_int_field(user_path, n, "user id", p[0]) for n, p in users], dtype=np.int64)
    user_table = dict(
        user_age=np.array([_int_field(user_path, n, "age", p[1]) for n, p in users], dtype=np.int64),
        user_gender=[p[2] for _, p in users],
        user_occupation=[p[3] for _, p in users],
        user_zip=[p[4] for _, p in users],
    )

    items = _split_lines(item_path, "|", 5 + len(ML100K_GENRES))
    item_ids = np.array([_int_field(item_path, n, "item id", p[0]) for n, p in items], dtype=np.int64)
    years, genres = [], []
    for _, p in items:
        # release date is dd-Mon-yyyy (one item has none: fall back to a "(yyyy)" in the title)
        year = _year(p[2][-4:]) if p[2].strip() else -1
        if year < 0:
            m = _TITLE_YEAR.search(p[1])
            year = int(m.group(1)) if m else -1
        years.append(year)
        genres.append([g for g, flag in zip(ML100K_GENRES, p[5:]) if flag.strip() == "1"])
    item_table = dict(item_year=np.array(years, dtype=np.int64), item_genres=genres,
                      item_title=[p[1] for _, p in items])

    values, lines = _parse_ratings(data_path, b"\t")
    return _assemble(data_path, values, lines, user_ids, item_ids, {**user_table, **item_table},
                     [data_path, user_path, item_path])


# ----------------------------------------------------------------------------- ml-1m

def read_ml1m(folder: str | Path) -> MovieLensRaw:
    """GroupLens ml-1m: ratings.dat, users.dat, movies.dat, '::'-separated (movies.dat latin-1)."""
    folder = _existing_folder(folder)
    ratings_path, user_path, item_path = _require(folder, FORMAT_FILES["ml-1m"], "ml-1m")

    users = _split_lines(user_path, "::", 5)
    user_ids = np.array([_int_field(user_path, n, "user id", p[0]) for n, p in users], dtype=np.int64)
    user_table = dict(
        user_gender=[p[1] for _, p in users],
        user_age=np.array([_int_field(user_path, n, "age", p[2]) for n, p in users], dtype=np.int64),
        user_occupation=[p[3] for _, p in users],
        user_zip=[p[4] for _, p in users],
    )

    items = _split_lines(item_path, "::", 3)
    item_ids = np.array([_int_field(item_path, n, "movie id", p[0]) for n, p in items], dtype=np.int64)
    years = []
    for _, p in items:
        m = _TITLE_YEAR.search(p[1])
        years.append(int(m.group(1)) if m else -1)
    item_table = dict(
        item_year=np.array(years, dtype=np.int64),
        item_genres=[[g for g in p[2].split("|") if g and g != "(no genres listed)"] for _, p in items],
        item_title=[p[1] for _, p in items],
    )

    values, lines = _parse_ratings(ratings_path, b"::")
    return _assemble(ratings_path, values, lines, user_ids, item_ids, {**user_table, **item_table},
                     [ratings_path, user_path, item_path])


# ----------------------------------------------------------------------------- RecBole atomic

def _atomic_table(path: Path) -> tuple[dict[str, list[str]], list[int]]:
    """A typed-header atomic file -> ({field name: column of strings}, 1-based line numbers)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    header = lines[0].rstrip("\r").split("\t")
    names = [h.split(":", 1)[0].strip() for h in header]
    if not header[0].strip() or any(":" not in h for h in header):
        raise UserError(
            f"{path.name} line 1 is not a RecBole header (expected fields like 'user_id:token\\titem_id:token'): "
            f"fix {path}"
        )
    rows, numbers = [], []
    width = len(names)
    for lineno, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) != width:
            raise UserError(
                f"{path.name} line {lineno} is malformed (expected {width} tab-separated fields, "
                f"found {len(parts)}): fix {path}"
            )
        rows.append(parts)
        numbers.append(lineno)
    columns = list(zip(*rows)) if rows else [()] * width
    return {n: list(c) for n, c in zip(names, columns)}, numbers


def _first(table: dict[str, list[str]], names: tuple[str, ...]) -> list[str] | None:
    for n in names:
        if n in table:
            return table[n]
    return None


def read_atomic(folder: str | Path) -> MovieLensRaw:
    """RecBole atomic files NAME.inter (+ optional NAME.user, NAME.item) with typed headers.

    Missing feature columns (or files) become "unknown" / -1; users or items that appear only in
    NAME.inter get such rows too, as RecBole itself allows.
    """
    folder = _existing_folder(folder)
    inters = sorted(folder.glob("*.inter"))
    if len(inters) != 1:
        raise UserError(
            f"{folder} holds {len(inters)} .inter files ({', '.join(p.name for p in inters) or 'none'}); "
            "RecBole atomic data needs exactly one NAME.inter: point data.root at a folder with one data set"
        )
    inter_path = inters[0]
    name = inter_path.stem
    user_path, item_path = folder / f"{name}.user", folder / f"{name}.item"

    inter, lines = _atomic_table(inter_path)
    for need in ("user_id", "item_id", "rating"):
        if need not in inter:
            raise UserError(
                f"{inter_path.name} has no {need} column (header fields: {', '.join(inter)}): "
                f"a rating data set needs user_id, item_id and rating"
            )
    line_arr = np.asarray(lines, dtype=np.int64)
    rating = _float_column(inter_path, "rating", inter["rating"], line_arr)
    ts_col = inter.get("timestamp")
    timestamp = (_float_column(inter_path, "timestamp", ts_col, line_arr) if ts_col is not None
                 else np.zeros(len(lines)))
    values = np.stack([np.zeros(len(lines)), np.zeros(len(lines)), rating, np.round(timestamp)], axis=1)
    _check_ratings(inter_path, values, line_arr)

    source_files = [inter_path]
    user_tab: dict[str, list[str]] = {}
    if user_path.is_file():
        user_tab, _ = _atomic_table(user_path)
        source_files.append(user_path)
    item_tab: dict[str, list[str]] = {}
    if item_path.is_file():
        item_tab, _ = _atomic_table(item_path)
        source_files.append(item_path)

    user_index, user_pos, user_tokens = _token_index(user_tab.get("user_id", []), inter["user_id"])
    item_index, item_pos, item_tokens = _token_index(item_tab.get("item_id", []), inter["item_id"])
    user = np.fromiter((user_index[t] for t in inter["user_id"]), dtype=np.int64, count=len(lines))
    item = np.fromiter((item_index[t] for t in inter["item_id"]), dtype=np.int64, count=len(lines))

    def column(tab: dict, names: tuple[str, ...], positions: list[int], tokens: list[str], fill: str) -> list[str]:
        col = _first(tab, names)
        known = [col[p] for p in positions] if col is not None else [fill] * len(positions)
        return known + [fill] * (len(tokens) - len(positions))

    def user_col(names: tuple[str, ...], fill: str = "unknown") -> list[str]:
        return column(user_tab, names, user_pos, user_tokens, fill)

    def item_col(names: tuple[str, ...], fill: str = "unknown") -> list[str]:
        return column(item_tab, names, item_pos, item_tokens, fill)

    tables = dict(
        user_gender=user_col(("gender",)),
        user_age=np.array([_int_or_missing(a) for a in user_col(("age",), "")], dtype=np.int64),
        user_occupation=user_col(("occupation",)),
        user_zip=user_col(("zip_code", "zip")),
        item_year=np.array([_year(y) for y in item_col(("release_year", "year"), "")], dtype=np.int64),
        item_genres=[g.split() for g in item_col(("class", "genre", "genres"), "")],
        item_title=item_col(("movie_title", "title")),
    )
    keep = _keep_last(user, item, len(item_tokens))
    return MovieLensRaw(
        rating_user=user[keep], rating_item=item[keep], rating=rating[keep].astype(np.float32),
        timestamp=np.round(timestamp[keep]).astype(np.int64), source_files=source_files, **tables,
    )


def _float_column(path: Path, what: str, col: list[str], lines: np.ndarray) -> np.ndarray:
    try:
        return np.array(col, dtype=np.float64)
    except ValueError:
        for k, text in enumerate(col):
            try:
                float(text)
            except ValueError:
                raise UserError(f"{path.name} line {lines[k]} has {what} {text!r}, not a number: fix {path}") from None
        raise


def _token_index(table_tokens: list[str], inter_tokens: list[str]) -> tuple[dict[str, int], list[int], list[str]]:
    """Row per token: the table's rows first (first of duplicate ids wins), then tokens seen only
    in the ratings. Returns (token -> row, table positions of the table rows, tokens by row)."""
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


def _int_or_missing(text: str) -> int:
    try:
        return int(float(text))
    except ValueError:
        return -1
