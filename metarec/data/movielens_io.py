"""Readers for MovieLens on disk: GroupLens ml-100k, GroupLens ml-1m and RecBole atomic files.

Each reader returns the same `MovieLensRaw` table (metarec/data/movielens_raw.py, which also defines
an item's year); `read_movielens(folder)` picks the reader by the format download.detect_format finds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from metarec.data.download import EXPECTED_HINT, FORMAT_FILES, detect_format
from metarec.data.movielens_atomic import read_atomic
from metarec.data.movielens_raw import (
    RATING_MAX, RATING_MIN, MovieLensRaw, assemble, existing_folder, int_field, parse_ratings,
    split_lines, title_year,
)
from metarec.errors import UserError

__all__ = ["ML100K_GENRES", "RATING_MIN", "RATING_MAX", "MovieLensRaw", "read_movielens", "read_ml100k", "read_ml1m",
           "read_atomic", "title_year"]

# The order of the 19 flags at the end of each u.item line (u.genre lists the same order).
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]


def read_movielens(folder: str | Path) -> MovieLensRaw:
    """Read whichever MovieLens format `folder` holds (ml-100k, ml-1m or RecBole atomic)."""
    folder = existing_folder(folder)
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


def _require(folder: Path, names: list[str], fmt: str) -> list[Path]:
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise UserError(
            f"{folder} is missing {', '.join(missing)} (a {fmt} folder needs {', '.join(names)}): "
            "point data.root at a complete copy or delete it to re-download"
        )
    return [folder / n for n in names]


# ----------------------------------------------------------------------------- ml-100k

def read_ml100k(folder: str | Path) -> MovieLensRaw:
    """GroupLens ml-100k: u.data (tab), u.user and u.item ('|', u.item latin-1)."""
    folder = existing_folder(folder)
    data_path, user_path, item_path = _require(folder, FORMAT_FILES["ml-100k"], "ml-100k")

    users = split_lines(user_path, "|", 5)
    user_ids = np.array([int_field(user_path, n, "user id", p[0]) for n, p in users], dtype=np.int64)
    user_table = dict(
        user_age=np.array([int_field(user_path, n, "age", p[1]) for n, p in users], dtype=np.int64),
        user_gender=[p[2] for _, p in users],
        user_occupation=[p[3] for _, p in users],
        user_zip=[p[4] for _, p in users],
    )

    items = split_lines(item_path, "|", 5 + len(ML100K_GENRES))
    item_ids = np.array([int_field(item_path, n, "item id", p[0]) for n, p in items], dtype=np.int64)
    item_table = dict(
        # The title's year, not the release date in the next field: the year every copy of ml-100k
        # (RecBole's has no release dates) and ml-1m can give (see movielens_raw.title_year).
        item_year=np.array([title_year(p[1]) for _, p in items], dtype=np.int64),
        item_genres=[[g for g, flag in zip(ML100K_GENRES, p[5:]) if flag.strip() == "1"] for _, p in items],
        item_title=[p[1] for _, p in items],
    )

    values, lines = parse_ratings(data_path, b"\t")
    return assemble(data_path, values, lines, user_ids, item_ids, {**user_table, **item_table},
                    [data_path, user_path, item_path])


# ----------------------------------------------------------------------------- ml-1m

def read_ml1m(folder: str | Path) -> MovieLensRaw:
    """GroupLens ml-1m: ratings.dat, users.dat, movies.dat, '::'-separated (movies.dat latin-1)."""
    folder = existing_folder(folder)
    ratings_path, user_path, item_path = _require(folder, FORMAT_FILES["ml-1m"], "ml-1m")

    users = split_lines(user_path, "::", 5)
    user_ids = np.array([int_field(user_path, n, "user id", p[0]) for n, p in users], dtype=np.int64)
    user_table = dict(
        user_gender=[p[1] for _, p in users],
        user_age=np.array([int_field(user_path, n, "age", p[2]) for n, p in users], dtype=np.int64),
        user_occupation=[p[3] for _, p in users],
        user_zip=[p[4] for _, p in users],
    )

    items = split_lines(item_path, "::", 3)
    item_ids = np.array([int_field(item_path, n, "movie id", p[0]) for n, p in items], dtype=np.int64)
    item_table = dict(
        item_year=np.array([title_year(p[1]) for _, p in items], dtype=np.int64),
        item_genres=[[g for g in p[2].split("|") if g and g != "(no genres listed)"] for _, p in items],
        item_title=[p[1] for _, p in items],
    )

    values, lines = parse_ratings(ratings_path, b"::")
    return assemble(ratings_path, values, lines, user_ids, item_ids, {**user_table, **item_table},
                    [ratings_path, user_path, item_path])
