"""MovieLens' model input: each rating's user and item features as categorical codes (MeLU's fields)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metarec.data.movielens_io import MovieLensRaw

AGE_EDGES = [18, 25, 35, 45, 50, 56]  # GroupLens ml-1m age groups; ml-100k ages are bucketed the same way
YEAR_EDGES = [1940, 1950, 1960, 1970, 1980, 1985, 1990, 1993, 1995, 1996, 1997, 1998, 1999, 2000]


def _codes(values: list[str]) -> np.ndarray:
    """Strings -> 1..V in sorted order (0 is left for unknown)."""
    vocab = {v: i + 1 for i, v in enumerate(sorted(set(values)))}
    return np.array([vocab[v] for v in values], dtype=np.int64)


def item_year_bucket(year: np.ndarray, cut: int) -> np.ndarray:
    """Release years after the cut never occur in meta-training: clamp them to the cut so new
    items land on a trained bucket. Unknown year -> 0."""
    edges = [e for e in YEAR_EDGES if e <= cut]
    bucket = np.searchsorted(edges, np.minimum(year, cut), side="right") + 1
    return np.where(year < 0, 0, bucket).astype(np.int64)


@dataclass
class Features:
    x: np.ndarray  # [ratings, fields + genres] int64, the model input of each rating
    fields: list[tuple[str, int]]  # (name, vocabulary size incl. 0 = unknown)
    genres: list[str]


def rating_features(raw: MovieLensRaw, cut: int, item_ids: bool, zip_prefix: int) -> Features:
    gender = np.array([{"M": 1, "F": 2}.get(g.upper(), 0) for g in raw.user_gender], dtype=np.int64)
    age = np.searchsorted(AGE_EDGES, raw.user_age, side="right").astype(np.int64) + 1
    occupation = _codes(raw.user_occupation)
    zips = [z[:zip_prefix] if z[:zip_prefix].isdigit() else "x" for z in raw.user_zip]
    zipc = _codes(zips)
    year = item_year_bucket(raw.item_year, cut)
    genres = sorted({g for gs in raw.item_genres for g in gs})
    gindex = {g: i for i, g in enumerate(genres)}
    multi = np.zeros((len(raw.item_genres), len(genres)), dtype=np.int64)
    for i, gs in enumerate(raw.item_genres):
        multi[i, [gindex[g] for g in gs]] = 1
    u, it = raw.rating_user, raw.rating_item
    cols = [gender[u], age[u], occupation[u], zipc[u], year[it]]
    fields = [("gender", 3), ("age", len(AGE_EDGES) + 2), ("occupation", int(occupation.max()) + 1),
              ("zip", int(zipc.max()) + 1), ("year", len([e for e in YEAR_EDGES if e <= cut]) + 2)]
    if item_ids:
        cols.append(it + 1)  # 0 = UNK, the row every unseen item reads
        fields.append(("item", len(raw.item_year) + 1))
    x = np.concatenate([np.stack(cols, 1), multi[it]], axis=1)
    return Features(x, fields, genres)
