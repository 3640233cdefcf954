"""User and item feature columns encoded into the model's input (categorical codes + multi-hot blocks).

A reader (MovieLens' GroupLens/RecBole files, any RecBole atomic data set) fills a rating table
(ratings.py) and names its feature columns with their kinds; `encode` turns them into `Features`, whose `rows(u, i)`
is the input row x of user u and item i. Kinds are RecBole's field types:
  token      one categorical field: codes 1..V in sorted order (or a given vocabulary), 0 = missing/unknown
  float      one categorical field: the bucket of the value (given edges, else quantile edges), 0 = missing
  token_seq  one multi-hot block over the field's tokens (sorted)
  float_seq  one multi-hot block over the float buckets its values fall in (a bag of bucketed values:
             their order and repetitions are dropped, as a token_seq's are)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KINDS = ("token", "float", "token_seq", "float_seq")
CATEGORICAL, MULTI_HOT = ("token", "float"), ("token_seq", "float_seq")


@dataclass
class Column:
    """One feature of every user (or every item): values by row, and how to encode them."""
    name: str
    kind: str  # one of KINDS
    values: list | np.ndarray  # token: str ("" = missing); float: float (nan = missing); *_seq: list of those
    vocab: list[str] | None = None  # token: codes in this order (others -> 0); None: the sorted values
    edges: list[float] | None = None  # float(_seq): bucket edges; None: quantiles of the fitted rows' values
    fit: np.ndarray | None = None  # [rows] bool: the rows whose values place quantile edges (None: all)


@dataclass
class Features:
    """Encoded user and item features; x of a rating = [user codes, item codes, user flags, item flags]."""
    user: np.ndarray  # [U, Fu] int64 codes
    item: np.ndarray  # [I, Fi] int64 codes (the item id last, when item ids are on)
    user_multi: np.ndarray  # [U, Mu] int64 0/1 flags
    item_multi: np.ndarray  # [I, Mi]
    fields: list[tuple[str, int]]  # categorical fields in x's order: (name, vocabulary size incl. 0)
    multi_hot: list[tuple[str, int]]  # multi-hot blocks in x's order: (name, width)
    n_base: int  # fields before the item id: the task source puts item context after them
    names: dict[str, list] = field(default_factory=dict)  # multi-hot block -> its tokens (or bucket edges)
    sides: dict[str, list[str]] = field(default_factory=dict)  # "user", "item" -> its fields and blocks, by name

    def rows(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The input row x of each (user, item) pair: [n, fields + flags] int64."""
        return np.concatenate([self.user[users], self.item[items], self.user_multi[users], self.item_multi[items]], 1)


def encode(users: list[Column], items: list[Column], n_users: int, n_items: int, buckets: int,
           item_ids: bool = False) -> Features:
    """Feature columns -> Features. `buckets`: quantile buckets of a float without given edges."""
    def side(columns, n):
        codes, flags, fields, blocks, names = [], [], [], [], {}
        for c in columns:
            if c.kind in CATEGORICAL:
                code, size = _token(c) if c.kind == "token" else _float(c, buckets)
                codes.append(code)
                fields.append((c.name, size))
            else:
                flag, tokens = _tokens_multi_hot(c) if c.kind == "token_seq" else _floats_multi_hot(c, buckets)
                flags.append(flag)
                blocks.append((c.name, flag.shape[1]))
                names[c.name] = tokens
        return (_stack(codes, n), np.concatenate(flags, 1) if flags else np.zeros((n, 0), np.int64),
                fields, blocks, names)

    u_codes, u_flags, u_fields, u_blocks, u_names = side(users, n_users)
    i_codes, i_flags, i_fields, i_blocks, i_names = side(items, n_items)
    n_base = len(u_fields) + len(i_fields)
    sides = {"user": [n for n, _ in u_fields + u_blocks], "item": [n for n, _ in i_fields + i_blocks]}  # content: no id
    if item_ids:
        i_codes = np.concatenate([i_codes, np.arange(1, n_items + 1, dtype=np.int64)[:, None]], 1)  # 0 = UNK
        i_fields = i_fields + [("item", n_items + 1)]
    return Features(u_codes, i_codes, u_flags, i_flags, u_fields + i_fields, u_blocks + i_blocks, n_base,
                    {**u_names, **i_names}, sides)


def _stack(codes: list[np.ndarray], n: int) -> np.ndarray:
    return np.stack(codes, 1).astype(np.int64) if codes else np.zeros((n, 0), np.int64)


def _token(c: Column) -> tuple[np.ndarray, int]:
    vocab = c.vocab if c.vocab is not None else sorted({v for v in c.values if v != ""})
    index = {v: i + 1 for i, v in enumerate(vocab)}
    return np.array([index.get(v, 0) for v in c.values], dtype=np.int64), len(vocab) + 1


def bucket_edges(values: np.ndarray, buckets: int) -> list[float]:
    """At most buckets - 1 distinct inner quantiles of the finite values (equal values share a bucket)."""
    values = values[np.isfinite(values)]
    if len(values) == 0 or buckets < 2:
        return []
    return sorted(set(np.quantile(values, np.linspace(0, 1, buckets + 1)[1:-1]).tolist()))


def bucketize(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """1 + the number of edges <= value; nan -> 0. Values past the last edge share the top bucket."""
    code = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right") + 1
    return np.where(np.isnan(values), 0, code).astype(np.int64)


def _float(c: Column, buckets: int) -> tuple[np.ndarray, int]:
    values = np.asarray(c.values, dtype=np.float64)
    edges = c.edges if c.edges is not None else bucket_edges(values if c.fit is None else values[c.fit], buckets)
    return bucketize(values, edges), len(edges) + 2


def _tokens_multi_hot(c: Column) -> tuple[np.ndarray, list[str]]:
    tokens = sorted({t for seq in c.values for t in seq})
    index = {t: i for i, t in enumerate(tokens)}
    flags = np.zeros((len(c.values), len(tokens)), dtype=np.int64)
    for row, seq in enumerate(c.values):
        flags[row, [index[t] for t in seq]] = 1
    return flags, tokens


def _floats_multi_hot(c: Column, buckets: int) -> tuple[np.ndarray, list[float]]:
    seqs = [np.asarray(s, dtype=np.float64) for s in c.values]
    fitted = seqs if c.fit is None else [s for s, f in zip(seqs, c.fit) if f]
    edges = c.edges if c.edges is not None else bucket_edges(np.concatenate([*fitted, np.zeros(0)]), buckets)
    flags = np.zeros((len(seqs), len(edges) + 1), dtype=np.int64)  # bucket b -> column b - 1 (no "missing" column)
    for row, s in enumerate(seqs):
        flags[row, bucketize(s[~np.isnan(s)], edges) - 1] = 1
    return flags, list(edges)
