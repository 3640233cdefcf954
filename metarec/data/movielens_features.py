"""MovieLens' model input (MeLU's fields): its user and item features as generic feature columns
(metarec/data/features.py), encoded to the codes every MovieLens run has always read."""
from __future__ import annotations

import numpy as np

from metarec.data.features import Column, Features, encode
from metarec.data.movielens_io import MovieLensRaw

AGE_EDGES = [18, 25, 35, 45, 50, 56]  # GroupLens ml-1m age groups; ml-100k ages are bucketed the same way
YEAR_EDGES = [1940, 1950, 1960, 1970, 1980, 1985, 1990, 1993, 1995, 1996, 1997, 1998, 1999, 2000]


def year_edges(cut: int) -> list[int]:
    """Release years after the cut never occur in meta-training: the edges stop at the cut, so new
    items land on the top trained bucket."""
    return [e for e in YEAR_EDGES if e <= cut]


def rating_features(raw: MovieLensRaw, cut: int, item_ids: bool, zip_prefix: int) -> Features:
    """gender (M, F), age (GroupLens' groups), occupation, zip prefix; year bucket; genres (multi-hot)."""
    users = [
        Column("gender", "token", [g.upper() for g in raw.user_gender], vocab=["M", "F"]),
        Column("age", "float", raw.user_age.astype(np.float64), edges=AGE_EDGES),
        Column("occupation", "token", raw.user_occupation),
        Column("zip", "token", [z[:zip_prefix] if z[:zip_prefix].isdigit() else "x" for z in raw.user_zip]),
    ]
    year = np.where(raw.item_year < 0, np.nan, raw.item_year.astype(np.float64))  # unknown year -> 0
    items = [Column("year", "float", year, edges=year_edges(cut)), Column("genre", "token_seq", raw.item_genres)]
    return encode(users, items, raw.num_users, raw.num_items, buckets=0, item_ids=item_ids)
