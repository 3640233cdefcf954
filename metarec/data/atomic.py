"""data=atomic: any RecBole atomic data set as cold-start tasks, with MovieLens' protocol.

    metarec train data=atomic data.root=PATH data.user_features=[age,gender] data.item_features=[genre]

NAME.inter gives the ratings (data.user_id_field, item_id_field, rating_field; time_field optional),
NAME.user and NAME.item the features the config names (metarec/data/features.py says how each RecBole
type is encoded), data.cut the new items; users are split, tasks drawn and floors computed exactly as
for MovieLens: the reading differs, the rest is every rating data set's (metarec/data/rating_source.py).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from torch import Tensor

from metarec.data.atomic_files import AtomicFile, find_inter, read_atomic_file, rows_of, side_file
from metarec.data.cache_check import fingerprint
from metarec.data.cold_cut import latest_ratings, random_items, share_threshold
from metarec.data.features import CATEGORICAL, Column, bucket_edges, bucketize, encode
from metarec.data.movielens_raw import existing_folder
from metarec.data.rating_source import RatingSource
from metarec.data.ratings import RatingData, RatingTable
from metarec.errors import UserError

MISSING = {"token": "", "float": float("nan"), "token_seq": [], "float_seq": np.zeros(0)}


@dataclass
class AtomicData:
    """One atomic data set read: the rating table, the files, and each table row's line in its file."""
    table: RatingTable
    inter: AtomicFile
    files: dict[str, AtomicFile | None]  # "user", "item" -> NAME.user, NAME.item (None: no such file)
    positions: dict[str, list[int]]  # "user", "item" -> the file row of each table row that has one
    item_rows: np.ndarray  # [R] the item row of every interaction line (before duplicates are dropped)
    duplicates: dict  # how many lines a pair rated twice dropped, and which rating it kept (data info shows it)
    tokens: dict[str, list[str]]  # "user", "item" -> the id token of each table row

    def column(self, side: str, name: str, fit: np.ndarray | None = None, vocab=None, edges=None) -> Column:
        """A feature of every user or item row; rows without a file row (only in NAME.inter): missing.
        A token field given bucket edges is read as a number (RecBole's ml-100k has age:token; a value that
        is not one is missing)."""
        file, pos = self.files[side], self.positions[side]
        kind = "float" if edges is not None and file.types[name] == "token" else file.types[name]
        known = file.numbers(name) if kind == "float" else file.values(name)
        n = self.table.num_users if side == "user" else self.table.num_items
        values = [known[p] for p in pos] + [MISSING[kind]] * (n - len(pos))
        if kind == "float":
            values = np.asarray(values, dtype=np.float64)
        return Column(name, kind, values, vocab=vocab, edges=edges, fit=fit)


def read_dataset(cfg) -> AtomicData:
    """NAME.inter (+ NAME.user, NAME.item) under data.root -> ratings as rows into the user and item tables."""
    if not cfg.root:
        raise UserError("data=atomic needs data.root: the folder holding NAME.inter (+ NAME.user, NAME.item)")
    inter = read_atomic_file(find_inter(existing_folder(cfg.root), cfg.dataset))
    if not len(inter):
        raise UserError(f"{inter.path} is empty: it has a header but no interactions; add one line per rating, "
                        f"or point data.root at a complete copy")
    ids = {"user": cfg.user_id_field, "item": cfg.item_id_field}
    for key, name in [("user_id_field", cfg.user_id_field), ("item_id_field", cfg.item_id_field),
                      ("rating_field", cfg.rating_field)]:
        if name not in inter.types:
            raise UserError(f"{inter.path.name} has no field {name} (its header: {', '.join(inter.types)}): "
                            f"set data.{key} to the field that holds it")
    files, rows, positions, counts, ids_of = {}, {}, {}, {}, {}
    for side in ("user", "item"):
        files[side] = side_file(inter.path, side)
        if files[side] is not None and ids[side] not in files[side].types:
            raise UserError(f"{files[side].path.name} has no field {ids[side]} (its header: "
                            f"{', '.join(files[side].types)}): the {side} file needs data.{side}_id_field")
        table_ids = files[side].columns[ids[side]] if files[side] is not None else []
        index, positions[side], tokens = rows_of(table_ids, inter.columns[ids[side]])
        rows[side] = np.fromiter(map(index.__getitem__, inter.columns[ids[side]]), dtype=np.int64, count=len(inter))
        counts[side], ids_of[side] = len(tokens), tokens
    rating = _ratings(inter, cfg)
    timed = cfg.time_field in inter.types
    stamps = inter.floats(cfg.time_field) if timed else np.zeros(len(inter))
    # a pair rated twice: its latest rating in time counts (the later line on a tie or without a time field)
    keep = latest_ratings(rows["user"], rows["item"], stamps if timed else None, counts["item"])
    table = RatingTable(rows["user"][keep], rows["item"][keep], rating[keep].astype(np.float32),
                        np.nan_to_num(np.round(stamps[keep])).astype(np.int64), counts["user"], counts["item"],
                        [inter.path] + [f.path for f in files.values() if f is not None])
    duplicates = {"duplicate_ratings_dropped": len(inter) - len(keep),
                  "duplicates_kept": "the latest in time" if timed else "the last in the file"}
    return AtomicData(table, inter, files, positions, rows["item"], duplicates, ids_of)


def _ratings(inter: AtomicFile, cfg) -> np.ndarray:
    """The rating field, every value a finite number on data.rating_scale (when given)."""
    rating = inter.floats(cfg.rating_field)
    lo, hi = (-np.inf, np.inf) if cfg.rating_scale is None else _scale(cfg.rating_scale)
    off = ~((rating >= lo) & (rating <= hi) & np.isfinite(rating))
    if off.any():
        k = int(np.argmax(off))
        where = "" if cfg.rating_scale is None else f", off data.rating_scale=[{lo:g}, {hi:g}]"
        raise UserError(f"{inter.path.name} line {inter.lines[k]}: field {cfg.rating_field} is "
                        f"{inter.columns[cfg.rating_field][k]!r}{where or ', not a number'}: fix {inter.path}"
                        f"{' or data.rating_scale' if where else ''}")
    return rating


def _scale(scale) -> tuple[float, float]:
    """data.rating_scale as (lowest, highest) (its schema declares the form: atomic_config.py)."""
    return float(scale[0]), float(scale[1])


def item_cut(cut, data: AtomicData, seed: int, time_field: str | None = None) -> tuple[np.ndarray, dict]:
    """[items] bool, True for a new item, and the cut as `metarec data info` shows it. Without a value or a
    quantile the cut is chosen to put data.cut.new_ratings of the ratings on new items: on data.cut.field,
    else on each item's first rating time, else (no time field) on a seeded random draw of items."""
    n = data.table.num_items
    if cut.share is not None:
        new = np.zeros(n, dtype=bool)
        new[np.random.default_rng([seed, 19]).permutation(n)[:int(round(cut.share * n))]] = True  # a stream of its own
        return new, {"cut": {"share": cut.share, "split_seed": seed}}
    if cut.value is not None and cut.quantile is not None:
        raise UserError(f"data.cut gives both value={cut.value} and quantile={cut.quantile}: keep one")
    field = cut.field if cut.field is not None else time_field if time_field in data.inter.types else None
    if field is None:
        if cut.value is not None or cut.quantile is not None:
            raise UserError(f"{data.inter.path.name} has no time field ({time_field}) to cut on: name an item or "
                            f"interaction field with data.cut.field, or drop data.cut.value / data.cut.quantile")
        new = random_items(data.table.rating_item, n, cut.new_ratings, seed)
        return new, {"cut": {"random_items": f"seeded by the split seed {seed}, drawn until they hold "
                                             f"{cut.new_ratings} of the ratings (there is no time field)"}}
    values = _cut_values(field, data)
    if cut.value is not None:
        threshold, why = float(cut.value), "data.cut.value"
    elif cut.quantile is not None:
        if not np.isfinite(values).any():
            raise UserError(f"data.cut.quantile={cut.quantile} needs a field with numbers ({field} has none): "
                            f"name one with data.cut.field, or cut a random share (data.cut.share=0.2)")
        threshold, why = float(np.quantile(values[np.isfinite(values)], cut.quantile)), f"quantile {cut.quantile}"
    else:
        threshold, _ = share_threshold(values, data.table.rating_item, cut.new_ratings)
        why = f"chosen to put {cut.new_ratings} of the ratings on new items (data.cut.new_ratings)"
    with np.errstate(invalid="ignore"):
        new = values > threshold  # an item without a value counts as existing
    first = "" if cut.field is not None or field not in data.inter.types else " (each item's first rating)"
    return new, {"cut": {"field": field + first, "above": threshold, "how": why}}


def _cut_values(name: str | None, data: AtomicData) -> np.ndarray:
    """[items] float: the item field `name` (a token that is not a number: missing), else each item's
    first (lowest) value of the interaction field."""
    n, item_file = data.table.num_items, data.files["item"]
    if item_file is not None and name in item_file.types:
        known = item_file.numbers(name)
        return np.concatenate([known[data.positions["item"]], np.full(n - len(data.positions["item"]), np.nan)])
    if name in data.inter.types:
        values = data.inter.floats(name)
        first = np.full(n, np.inf)
        np.minimum.at(first, data.item_rows, np.where(np.isnan(values), np.inf, values))
        return np.where(np.isinf(first), np.nan, first)
    fields = sorted(set(data.inter.types) | set(item_file.types if item_file is not None else ()))
    raise UserError(f"data.cut.field={name} is a field of neither {data.inter.path.stem}.item nor .inter "
                    f"(fields: {', '.join(fields)}): name one, or cut a random share (data.cut.share=0.2)")


def feature_columns(cfg, data: AtomicData, new_item: np.ndarray) -> tuple[list[Column], list[Column]]:
    """The columns data.user_features and data.item_features name; item quantiles from existing items."""
    named = [*cfg.user_features, *cfg.item_features]
    edges, vocab = per_field(cfg, "float_edges", named), per_field(cfg, "token_vocab", named)
    out = []
    for side, names in (("user", cfg.user_features), ("item", cfg.item_features)):
        file = data.files[side]
        for name in names:
            if file is None or name not in file.types:
                where = (f"{file.path.name} has {', '.join(file.types)}" if file is not None
                         else f"there is no {data.inter.path.stem}.{side}")
                raise UserError(f"data.{side}_features names {name}, which is not a {side} field ({where}): "
                                f"name fields of the {side} file's header")
        fit = ~new_item if side == "item" else None
        out.append([data.column(side, name, fit, vocab.get(name), edges.get(name)) for name in names])
    return out[0], out[1]


def per_field(cfg, key: str, features: list[str]) -> dict[str, list]:
    """data.float_edges / data.token_vocab: {feature: [values]}, each key a named feature."""
    given = cfg[key]
    if given is None:
        return {}
    if not isinstance(given, Mapping) or not all(isinstance(v, Sequence) and not isinstance(v, str) for v in given.values()):
        raise UserError(f"data.{key}={given} must map fields to lists, e.g. data.{key}={{age:[18,25,35]}}")
    unknown = [k for k in given if k not in features]
    if unknown:
        raise UserError(f"data.{key} names {', '.join(map(str, unknown))}, not among data.user_features / "
                        f"data.item_features ({', '.join(features) or 'none'}): name features")
    if key == "float_edges":
        for name, edges in given.items():
            if list(edges) != sorted(edges):
                raise UserError(f"data.float_edges.{name}={list(edges)} must be in increasing order")
        return {k: [float(e) for e in v] for k, v in given.items()}
    return {k: [str(t) for t in v] for k, v in given.items()}


def test_users(cfg, data: AtomicData) -> np.ndarray | None:
    """[users] bool from data.test_user_field (a NAME.user field, above 0.5: a test user), or None."""
    name, file = cfg.test_user_field, data.files["user"]
    if name is None:
        return None
    if file is None or name not in file.types:
        raise UserError(f"data.test_user_field={name} is not a field of {data.inter.path.stem}.user: name a user field "
                        f"whose value is 1 for a test user, or set it to null for a seeded split")
    flags = np.zeros(data.table.num_users, dtype=bool)
    flags[:len(data.positions["user"])] = np.nan_to_num(file.numbers(name)[data.positions["user"]]) > 0.5
    return flags


def item_titles(cfg, data: AtomicData) -> list[str]:
    """data.title_field of each item row ("" without one, or for an item only NAME.inter names)."""
    file, name = data.files["item"], cfg.title_field
    if name is None:
        return [""] * data.table.num_items
    if file is None or name not in file.types:
        raise UserError(f"data.title_field={name} is not a field of {data.inter.path.stem}.item: "
                        "name an item field, or null")
    known = [file.columns[name][p] for p in data.positions["item"]]
    return known + [""] * (data.table.num_items - len(known))


def user_encoder(users: list[Column], float_buckets: int, folder: Path) -> Callable[[dict, Tensor], Tensor]:
    """encode(given, codes): a new user's NAME.user fields by name (`--user location=314`) written into
    `codes`, a feature row: a token as written in the file, a float bucketed as training bucketed it."""
    columns = {c.name: c for c in users if c.kind in CATEGORICAL}  # a feature row's user codes, in order
    names = list(columns)

    def encode_user(given: dict, codes: Tensor) -> Tensor:
        for name, value in given.items():
            if name not in columns:
                raise UserError(f"user feature {name!r} is not one the model reads (data.user_features: "
                                f"{', '.join(names) or 'none'})")
            c, value = columns[name], str(value).strip()
            if c.kind == "float":
                try:
                    number = float(value)
                except ValueError:
                    raise UserError(f"user feature {name}={value!r} is not a number") from None
                values = np.asarray(c.values, dtype=np.float64)
                edges = c.edges if c.edges is not None else bucket_edges(values, float_buckets)  # training's
                codes[names.index(name)] = int(bucketize(np.array([number]), edges)[0])
                continue
            vocab = c.vocab if c.vocab is not None else sorted({v for v in c.values if v != ""})
            if value not in vocab:
                raise UserError(f"user feature {name}={value!r} is not in {folder.name}'s user file (it has "
                                f"{', '.join(vocab[:20])}{' ...' if len(vocab) > 20 else ''})")
            codes[names.index(name)] = vocab.index(value) + 1
        return codes

    return encode_user


class AtomicTasks(RatingSource):
    """MovieLens' cold-start tasks over a RecBole atomic data set (only the reading differs)."""

    @classmethod
    def read(cls, cfg, split_seed: int, progress: bool = True) -> RatingData:
        data = read_dataset(cfg)
        folder = Path(data.inter.path).parent
        new_item, cut_info = item_cut(cfg.cut, data, split_seed, cfg.time_field)
        test = test_users(cfg, data)
        users, items = feature_columns(cfg, data, new_item)
        titles = item_titles(cfg, data)
        features = encode(users, items, data.table.num_users, data.table.num_items, cfg.float_buckets, cfg.item_ids)
        low, high = data.table.rating.min(initial=np.inf), data.table.rating.max(initial=-np.inf)
        scale = _scale(cfg.rating_scale) if cfg.rating_scale is not None else (float(low), float(high))
        fields = {f"{side}_fields": dict(f.types) for side, f in (("inter", data.inter), *data.files.items()) if f is not None}
        return RatingData(data.table, features, new_item, scale, {**cut_info, **data.duplicates}, folder,
                          fingerprint(data.table.source_files), list(data.tokens["item"]), titles,
                          user_encoder(users, cfg.float_buckets, folder), test, fields)

    def info(self) -> dict:
        out = super().info()
        out["features"] = {"fields": [list(f) for f in self.fields], "multi_hot": [list(b) for b in self.multi_hot]}
        return {**out, **self.data.facts}
