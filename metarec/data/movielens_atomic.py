"""MovieLens from RecBole atomic files (RecBole's ml-100k copy): NAME.inter (+ optional NAME.user,
NAME.item), parsed by metarec/data/atomic_files.py, read into MovieLens' plain tables."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from metarec.data.atomic_files import find_inter, read_atomic_file, rows_of, side_file
from metarec.data.movielens_raw import (
    MovieLensRaw, check_ratings, existing_folder, keep_last, title_year, year_field,
)
from metarec.errors import UserError


def read_atomic(folder: str | Path) -> MovieLensRaw:
    """RecBole atomic files NAME.inter (+ optional NAME.user, NAME.item) with typed headers.

    Missing feature columns (or files) become "unknown" / -1; users or items that appear only in
    NAME.inter get such rows too, as RecBole itself allows.
    """
    inter_path = find_inter(existing_folder(folder))
    inter, rating, timestamp = _read_inter(inter_path)
    source_files, tabs = [inter_path], {}
    for kind in ("user", "item"):
        table = side_file(inter_path, kind)
        tabs[kind] = table.columns if table is not None else {}
        source_files += [table.path] if table is not None else []
    user_tab, item_tab = tabs["user"], tabs["item"]

    user_index, user_pos, user_tokens = rows_of(user_tab.get("user_id", []), inter["user_id"])
    item_index, item_pos, item_tokens = rows_of(item_tab.get("item_id", []), inter["item_id"])
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
        timestamp=np.round(timestamp[keep]).astype(np.int64), num_users=len(user_tokens),
        num_items=len(item_tokens), source_files=source_files, item_id=np.array(item_tokens), **tables,
    )


def _read_inter(path: Path) -> tuple[dict[str, list[str]], np.ndarray, np.ndarray]:
    """NAME.inter -> (its columns, [R] float64 ratings, [R] float64 timestamps), checked like u.data."""
    inter = read_atomic_file(path)
    for need in ("user_id", "item_id", "rating"):
        if need not in inter.columns:
            raise UserError(
                f"{path.name} has no {need} column (header fields: {', '.join(inter.columns)}): "
                f"a rating data set needs user_id, item_id and rating"
            )
    rating = inter.floats("rating")
    timestamp = inter.floats("timestamp") if "timestamp" in inter.columns else np.zeros(len(inter))
    values = np.stack([np.zeros(len(inter)), np.zeros(len(inter)), rating, np.round(timestamp)], axis=1)
    check_ratings(path, values, inter.lines)
    return inter.columns, rating, timestamp


def _column(table: dict[str, list[str]], names: tuple[str, ...], positions: list[int], rows: int,
            fill: str) -> list[str]:
    """The first of `names` that `table` has, one value per row (rows past the table: `fill`)."""
    col = next((table[n] for n in names if n in table), None)
    known = [col[p] for p in positions] if col is not None else [fill] * len(positions)
    return known + [fill] * (rows - len(positions))


def _int_or_missing(text: str) -> int:
    try:
        return int(float(text))
    except ValueError:
        return -1
