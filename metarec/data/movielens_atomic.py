"""Reader for RecBole atomic files: NAME.inter (+ optional NAME.user, NAME.item) with typed headers."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from metarec.data.movielens_raw import (
    MovieLensRaw, check_ratings, existing_folder, keep_last, title_year, year_field,
)
from metarec.errors import UserError


def read_atomic(folder: str | Path) -> MovieLensRaw:
    """RecBole atomic files NAME.inter (+ optional NAME.user, NAME.item) with typed headers.

    Missing feature columns (or files) become "unknown" / -1; users or items that appear only in
    NAME.inter get such rows too, as RecBole itself allows.
    """
    inter_path = _inter_path(existing_folder(folder))
    inter, rating, timestamp = _read_inter(inter_path)
    source_files, tabs = [inter_path], {}
    for kind in ("user", "item"):
        path = inter_path.with_suffix(f".{kind}")
        tabs[kind] = _atomic_table(path)[0] if path.is_file() else {}
        source_files += [path] if path.is_file() else []
    user_tab, item_tab = tabs["user"], tabs["item"]

    user_index, user_pos, user_tokens = _token_index(user_tab.get("user_id", []), inter["user_id"])
    item_index, item_pos, item_tokens = _token_index(item_tab.get("item_id", []), inter["item_id"])
    user = np.fromiter((user_index[t] for t in inter["user_id"]), dtype=np.int64, count=len(rating))
    item = np.fromiter((item_index[t] for t in inter["item_id"]), dtype=np.int64, count=len(rating))

    def user_col(names: tuple[str, ...], fill: str = "unknown") -> list[str]:
        return _column(user_tab, names, user_pos, len(user_tokens), fill)

    def item_col(names: tuple[str, ...], fill: str = "unknown") -> list[str]:
        return _column(item_tab, names, item_pos, len(item_tokens), fill)

    titles = item_col(("movie_title", "title"))
    # The title's year (see movielens_raw.title_year): RecBole's release_year column holds it, cut
    # from the title; where that column is not a year, a "(yyyy)" left in the title still counts.
    years = [y if y >= 0 else title_year(t) for y, t in
             zip((year_field(y) for y in item_col(("release_year", "year"), "")), titles)]
    tables = dict(
        user_gender=user_col(("gender",)),
        user_age=np.array([_int_or_missing(a) for a in user_col(("age",), "")], dtype=np.int64),
        user_occupation=user_col(("occupation",)),
        user_zip=user_col(("zip_code", "zip")),
        item_year=np.array(years, dtype=np.int64),
        item_genres=[g.split() for g in item_col(("class", "genre", "genres"), "")],
        item_title=titles,
    )
    keep = keep_last(user, item, len(item_tokens))
    return MovieLensRaw(
        rating_user=user[keep], rating_item=item[keep], rating=rating[keep].astype(np.float32),
        timestamp=np.round(timestamp[keep]).astype(np.int64), source_files=source_files,
        item_id=np.array(item_tokens), **tables,
    )


def _inter_path(folder: Path) -> Path:
    inters = sorted(folder.glob("*.inter"))
    if len(inters) != 1:
        raise UserError(
            f"{folder} holds {len(inters)} .inter files ({', '.join(p.name for p in inters) or 'none'}); "
            "RecBole atomic data needs exactly one NAME.inter: point data.root at a folder with one data set"
        )
    return inters[0]


def _read_inter(path: Path) -> tuple[dict[str, list[str]], np.ndarray, np.ndarray]:
    """NAME.inter -> (its columns, [R] float64 ratings, [R] float64 timestamps), checked like u.data."""
    inter, lines = _atomic_table(path)
    for need in ("user_id", "item_id", "rating"):
        if need not in inter:
            raise UserError(
                f"{path.name} has no {need} column (header fields: {', '.join(inter)}): "
                f"a rating data set needs user_id, item_id and rating"
            )
    line_arr = np.asarray(lines, dtype=np.int64)
    rating = _float_column(path, "rating", inter["rating"], line_arr)
    ts_col = inter.get("timestamp")
    timestamp = (_float_column(path, "timestamp", ts_col, line_arr) if ts_col is not None
                 else np.zeros(len(lines)))
    values = np.stack([np.zeros(len(lines)), np.zeros(len(lines)), rating, np.round(timestamp)], axis=1)
    check_ratings(path, values, line_arr)
    return inter, rating, timestamp


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


def _column(table: dict[str, list[str]], names: tuple[str, ...], positions: list[int], rows: int,
            fill: str) -> list[str]:
    """The first of `names` that `table` has, one value per row (rows past the table: `fill`)."""
    col = next((table[n] for n in names if n in table), None)
    known = [col[p] for p in positions] if col is not None else [fill] * len(positions)
    return known + [fill] * (rows - len(positions))


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
