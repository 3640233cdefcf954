"""MovieLens' model input (MeLU's fields): its user and item features as generic feature columns
(metarec/data/features.py), and a new user's features (`metarec recommend`) encoded the same way."""
from __future__ import annotations

from typing import Callable

import numpy as np
from torch import Tensor

from metarec.data.features import Column, Features, encode
from metarec.data.movielens_io import MovieLensRaw
from metarec.errors import UserError

AGE_EDGES = [18, 25, 35, 45, 50, 56]  # GroupLens ml-1m age groups; ml-100k ages are bucketed the same way
USER_COLUMNS = ("gender", "age", "occupation", "zip")  # MovieLens' user codes, the first columns of its rows
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


def user_encoder(raw: MovieLensRaw, features: Features, zip_prefix: int) -> Callable[[dict, Tensor], Tensor]:
    """encode(given, codes): a new user's {gender, age, occupation, zip} (raw values as in the data's user
    table; ages in years) written into `codes`, a feature row, as training encoded them: the code of each
    value that a user with a rating has (gender, occupation, zip prefix), the age's group."""
    rated = np.flatnonzero(np.bincount(raw.rating_user, minlength=raw.num_users) > 0).tolist()
    values = {"gender": [g.upper() for g in raw.user_gender], "occupation": raw.user_occupation,
              "zip": [z[:zip_prefix] if z[:zip_prefix].isdigit() else "x" for z in raw.user_zip]}
    codes_of = features.user[rated, :len(USER_COLUMNS)].tolist()
    vocab = {name: {values[name][u]: c[USER_COLUMNS.index(name)] for u, c in zip(rated, codes_of)} for name in values}

    def encode_user(given: dict, codes: Tensor) -> Tensor:
        unknown = set(given) - set(USER_COLUMNS)
        if unknown:
            raise UserError(f"user feature {sorted(unknown)[0]!r} is not one of {', '.join(USER_COLUMNS)}")
        for j, name in enumerate(USER_COLUMNS):
            if name not in given:
                continue
            value = str(given[name]).strip()
            if name == "age":
                codes[j] = _age_code(value)
                continue
            key = value.upper() if name == "gender" else value[:zip_prefix] if name == "zip" else value
            if key not in vocab[name]:
                options = sorted(vocab[name])
                raise UserError(f"user feature {name}={given[name]!r} is not in the data set's user table "
                                f"(it has {', '.join(options[:25])}{' ...' if len(options) > 25 else ''})")
            codes[j] = vocab[name][key]
        return codes

    return encode_user


def _age_code(value: str) -> int:
    """An age in years -> its code: 1 + the number of AGE_EDGES at or below it."""
    if value.startswith("-") and value[1:].strip().isdigit():
        raise UserError(f"user feature age={value} is negative: give the user's age in years (e.g. age=25)")
    if not value.isdigit():
        raise UserError(f"user feature age={value!r} is not a whole number of years (e.g. age=25)")
    return int(np.searchsorted(AGE_EDGES, int(value), side="right")) + 1
