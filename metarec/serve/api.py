"""A trained checkpoint as a recommender for a new user, from Python (`metarec recommend` is its CLI):

    rec = metarec.load("outputs/DATE/TIME/checkpoints/best.pt", data_root="../shared/data/ml-1m")
    user = rec.adapt([(2571, 5), (1721, 2), (1, 4)], user={"gender": "F", "age": 25})
    user.recommend(10)          # [Recommendation(item_id, title, predicted_rating), ...], best first
    user.predict([260, 1196])   # predicted ratings of any items of the data set

load() rebuilds the checkpoint's data source and model from the config, model spec and data fingerprint
it stores. adapt() adapts the way evaluation does, with the checkpoint's own algorithm for the config's
evaluation steps (MAML's gradient steps, ridge's exact solve, prompt's...), on the new user's ratings as
support set and every item of the data set as query: one batched pass that scores the whole catalogue.
recommend(k) ranks the catalogue (items with a rating in the data) less the items the user rated.
Item ids are the data set's own (MovieLens movie ids, an atomic data set's id tokens); predicted ratings are
clipped to the data set's scale (the ranking uses the model's own scores, so clipped ties keep their order).
The item factors of data.item_factors come from the checkpoint's model (the table it trained with), so
loading does not fit them again.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from metarec.run import checkpoint
from metarec.errors import UserError, first_line
from metarec.tasks import TaskBatch


@dataclass
class Recommendation:
    item_id: int | str  # the data set's own id
    title: str
    predicted_rating: float


@dataclass
class Rating:
    item_id: str  # as given
    rating: float
    where: str  # "FILE line N" or "ratings[i]": where a bad rating is pointed at


class AdaptedUser:
    """A new user after adaptation: the predicted rating of every item of the data set."""

    def __init__(self, rec: "Recommender", rated: np.ndarray, scores: torch.Tensor):
        self.rec, self.rated, self.scores = rec, rated, scores  # rated: item rows; scores: [items], the ranking's
        self.shown = scores.clamp(*rec.scale)  # a predicted rating shown to a user stays on the data set's scale

    def predict(self, items) -> list[float]:
        """Predicted ratings of `items` (the data set's item ids)."""
        rows = [self.rec.item_row(i, f"items[{j}]") for j, i in enumerate(items)]
        return [float(self.shown[r]) for r in rows]

    def recommend(self, k: int = 10) -> list[Recommendation]:
        """The k catalogue items with the highest predicted rating that the user did not rate, best first."""
        if k < 1:
            raise UserError(f"top_k={k} must be at least 1")
        score = self.scores.clone()
        score[~self.rec.catalogue] = -math.inf
        score[torch.as_tensor(self.rated, dtype=torch.long)] = -math.inf
        k = min(k, int(torch.isfinite(score).sum()))
        top = torch.topk(score, k).indices.tolist()
        return [Recommendation(self.rec.item_ids[r], self.rec.titles[r], round(float(self.shown[r]), 4)) for r in top]


class Recommender:
    """What load() returns: adapt(ratings) -> AdaptedUser; recommend(k) / predict(items) of the last one."""

    def __init__(self, cfg, source, algo, factor_fold: int | None, path: Path):
        self.cfg, self.source, self.algo, self.factor_fold, self.path = cfg, source, algo, factor_fold, path
        self.item_ids, self.titles = source.item_labels()  # the data set's own ids: MovieLens' numbers, atomic tokens
        self._row = {str(i): r for r, i in enumerate(self.item_ids)}
        self.catalogue = torch.bincount(source.rating_item.cpu(), minlength=source.num_items) > 0  # [items] rated ones
        self.scale = tuple(source.rating_scale)  # ratings given are checked on it; predictions shown are clipped to it
        self.steps = cfg.algo.eval_steps if cfg.algo.eval_steps is not None else cfg.algo.inner_steps
        self.user: AdaptedUser | None = None
        source.item_rows(torch.arange(1, device=source.device), None, factor_fold)  # its tables, made once, here
        source.user_codes()

    def item_row(self, item_id, where: str) -> int:
        row = self._row.get(str(item_id).strip())
        if row is None:
            raise UserError(f"{where}: item {item_id} is not in the data set ({len(self._row)} items, "
                            f"ids {self.item_ids[0]}..{self.item_ids[-1]}): use the data set's own item ids")
        return row

    def adapt(self, ratings, user: dict | None = None) -> AdaptedUser:
        """Adapt to a new user's ratings: a list of (item_id, rating), a {item_id: rating} dict or a
        DataFrame with item_id and rating columns; `user`: optional features (MovieLens: gender, age,
        occupation, zip; data=atomic: its user fields by name, e.g. {"location": "314"}; a missing one takes
        the most common value among the meta-train users)."""
        given = ratings if isinstance(ratings, list) and all(isinstance(r, Rating) for r in ratings) else as_ratings(ratings)
        if not given:
            raise UserError("no ratings given: a new user needs at least one (item_id, rating)")
        rows, seen = [], {}
        for r in given:
            row = self.item_row(r.item_id, r.where)
            lo, hi = self.scale
            if not lo <= r.rating <= hi:  # also refuses nan
                raise UserError(f"{r.where}: rating {r.rating:g} is off the data set's {lo:g}-{hi:g} scale")
            if row in seen:
                raise UserError(f"{r.where}: item {r.item_id} is rated twice (also at {seen[row]}): keep one rating per item")
            seen[row] = r.where
            rows.append(row)
        src, device = self.source, self.source.device
        items = torch.arange(src.num_items, device=device)
        x = src.item_rows(items, user, self.factor_fold)  # [items, F]: every item of the data set
        support = torch.as_tensor(rows, device=device)
        y = torch.tensor([r.rating for r in given], dtype=torch.float32, device=device)
        ones = torch.ones(1, len(items), device=device)
        batch = TaskBatch(x[support][None], y[None], torch.ones_like(y)[None], x[None], ones * 0, ones)
        scores = self.algo.adapt_trace(batch, self.steps, at=[self.steps])[-1][0].float().cpu()
        self.user = AdaptedUser(self, np.array(rows), scores)
        return self.user

    def _last(self) -> AdaptedUser:
        if self.user is None:
            raise UserError("no user adapted yet: call adapt(ratings) first")
        return self.user

    def recommend(self, k: int = 10) -> list[Recommendation]:
        return self._last().recommend(k)

    def predict(self, items) -> list[float]:
        return self._last().predict(items)


def as_ratings(ratings) -> list[Rating]:
    """(item_id, rating) pairs, a {item_id: rating} dict or a DataFrame (item_id / rating columns) -> Ratings."""
    pandas = sys.modules.get("pandas")  # a DataFrame's caller has imported pandas; metarec does not need it
    if pandas is not None and isinstance(ratings, pandas.DataFrame):
        cols = {str(c).lower(): c for c in ratings.columns}
        if "item_id" not in cols or "rating" not in cols:
            raise UserError(f"the ratings table needs item_id and rating columns (it has {', '.join(map(str, ratings.columns))})")
        pairs = list(zip(ratings[cols["item_id"]].tolist(), ratings[cols["rating"]].tolist()))
    elif isinstance(ratings, dict):
        pairs = list(ratings.items())
    else:
        pairs = list(ratings)
    out = []
    for i, pair in enumerate(pairs):
        try:
            item, value = pair
            out.append(Rating(str(item), float(value), f"ratings[{i}]"))
        except (TypeError, ValueError):
            raise UserError(f"ratings[{i}] = {pair!r} is not an (item_id, rating) pair with a numeric rating") from None
    return out


def load(path: str | Path, data_root: str | None = None, device: str = "cpu") -> Recommender:
    """A checkpoint of `metarec train` as a Recommender (data_root: where its data is now, if moved)."""
    from metarec.algos import ALGOS
    from metarec.data import DATASETS, build_source, source_class
    from metarec.run.train import build_model

    path = Path(path)
    ck = checkpoint.load(path)
    cfg = checkpoint.config(ck, path)
    if source_class(cfg.data.name).kind != "rating":
        rated = " or ".join(f"data={name}" for name in DATASETS if source_class(name).kind == "rating")
        raise UserError(f"checkpoint {path} was trained on data={cfg.data.name}: recommendations need a rating "
                        f"data set with items ({rated})")
    if data_root is not None:
        cfg.data.root = str(data_root)
    data_cfg = OmegaConf.merge(cfg.data, {"item_factors": 0})  # the factor table comes with the model
    factor_fold = cfg.data.factor_folds if cfg.data.item_factors else None  # a new user reads the full fit
    dev = torch.device(device)
    source = build_source(data_cfg, dev, cfg.seed, progress=False)
    if ck.get("fingerprint") != source.fingerprint():
        raise UserError(f"checkpoint {path} was trained on other data than {source.folder} (the data fingerprints "
                        f"differ): pass the data it was trained on (data.root=PATH)")
    try:
        model = build_model(cfg.model, cfg.algo, ck["model_spec"]).to(dev)
        algo = ALGOS[cfg.algo.name](cfg.algo, model, source.kind, compile=False, fast_paths=cfg.trainer.fast_paths)
        model.load_state_dict(ck["model"])
        algo.load_state_dict(ck["algo"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise UserError(f"checkpoint {path} does not fit the model its config describes ({first_line(e)})") from None
    model.eval()
    return Recommender(cfg, source, algo, factor_fold, path)
