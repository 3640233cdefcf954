"""Model input rows for any (user, item) pair of a rating source, not only the rated ones: the
catalogue ranking of evaluation (eval.ranking=catalog, metarec/evaluation/ranking.py) and `metarec
recommend` (metarec/serve/api.py) score every item of the catalogue for a user.

A row is laid out as a training row (rows.py; features.Features.rows): the user's codes, the item's
codes, the user's and the item's multi-hot flags, the two item context codes after the first n_base
columns (data.item_stats) and the factor-table row last (data.item_factors). The user's and the
item's columns are read off one of their ratings, so they carry the training encoding by
construction; a new user's are encoded from the features given (the reader's RatingData.encode_user:
MovieLens' gender, age, occupation, zip, data=atomic's user fields), or take the meta-train users'
most common codes.

Item context: an evaluation state reads the one its query rows read (the training pool and every
support set of the state); a new user (recommend) reads the training pool's, the context the model
was trained on. A new item that no training user rated has no context (codes 0), as in meta-training.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from metarec.data.floors import Floors
from metarec.data.protocol import Protocol
from metarec.data.ratings import RatingData, RatingTable
from metarec.data.rows import InputRows
from metarec.tasks import Catalog, liked_rating

NEW_ITEM_STATES = ("item_cold", "user_item_cold", "val_new", "val_item_cold")  # their catalogue: new items; the others: existing ones


def first_ratings(table: RatingTable) -> tuple[np.ndarray, np.ndarray]:
    """One rating of each user and of each item (-1 where there is none): where their columns are read."""
    firsts = []
    for of, n in ((table.rating_user, table.num_users), (table.rating_item, table.num_items)):
        first = np.full(n, -1, dtype=np.int64)
        first[of[::-1]] = np.arange(len(of))[::-1]  # the last write wins: the first rating
        firsts.append(first)
    return firsts[0], firsts[1]


class CatalogRows:
    """The catalogue of one source: its item pools, the rows of any (user, item) pair and the
    non-learned rankings. A state's item context table is made when the state is first asked for."""

    def __init__(self, data: RatingData, rows: InputRows, protocol: Protocol, floors: Floors, factor_folds: int):
        """factor_folds: data.factor_folds, the fold of the factor table fitted on every training rating."""
        self.data, self.rows, self.protocol, self.floors = data, rows, protocol, floors
        self.device, self.n_items, self.factor_folds = rows.device, data.table.num_items, factor_folds
        self.first_user, self.first_item = (torch.from_numpy(f).to(self.device) for f in first_ratings(data.table))
        f = data.features
        n_user, n_item = f.user.shape[1], f.item.shape[1]
        mask = torch.zeros(n_user + n_item + f.user_multi.shape[1] + f.item_multi.shape[1], dtype=torch.bool)
        mask[:n_user] = True
        mask[n_user + n_item:n_user + n_item + f.user_multi.shape[1]] = True
        self.user_mask = mask.to(self.device)  # [F'] the columns of a feature row (x less its factor column) that are the user's
        pool = rows.x[self.first_user[torch.as_tensor(protocol.pool_users, device=self.device)], :mask.numel()]
        self.common_user = pool.mode(0).values  # [F'] the meta-train users' most common codes
        self.contexts: dict[str, Tensor] = {}  # item context codes [items, 2]: "train" (a new user's) and per state

    def item_pool(self, new: bool) -> Tensor:
        """Item rows with at least one rating, new (new=True) or existing."""
        is_new = torch.from_numpy(np.asarray(self.data.new_item, dtype=bool)).to(self.device)
        return torch.nonzero((self.first_item >= 0) & (is_new == new)).flatten()

    def _context(self, key: str) -> Tensor:
        """The item context table of "train" (the training pool's) or of a state (what its query rows read)."""
        if key not in self.contexts:
            context = self.rows.context
            members = (torch.from_numpy(self.protocol.train_ratings).to(self.device) if key == "train"
                       else context.members(key))
            self.contexts[key] = context.table(members)
        return self.contexts[key]

    def _rows(self, user_x: Tensor, folds: Tensor | None, items: Tensor, context: Tensor | None) -> Tensor:
        """x [users, N, F] of every (user, item) pair: user_x [users, F'] (a feature row of each user: only
        its user columns are read), folds [users] (the factor table's fold each user reads, None without a
        table), items [N], context [items, 2] or None."""
        n_users, n, width = user_x.shape[0], len(items), self.user_mask.numel()
        item_x = self.rows.x[self.first_item[items], :width]  # [N, F']
        rows = torch.where(self.user_mask, user_x[:, None, :width], item_x[None])  # [users, N, F']
        parts = [rows]
        if context is not None:
            b = self.rows.n_base
            parts = [rows[..., :b], context[items][None].expand(n_users, n, -1), rows[..., b:]]
        if folds is not None:
            parts.append((1 + folds[:, None] * self.n_items + items[None])[..., None])
        return torch.cat(parts, -1)

    # ---- a new user (metarec recommend, metarec.load) ----------------------------------------------------
    def user_codes(self, features: dict | None = None) -> Tensor:
        """A new user's feature row [F'] (only its user columns count) from the features given by name; a
        feature not given takes the most common code among the meta-train users."""
        features = {k: v for k, v in (features or {}).items() if v not in (None, "")}
        codes = self.common_user.clone()
        return self.data.encode_user(features, codes) if features else codes

    def item_rows(self, items: Tensor, user: dict | None = None, factor_fold: int | None = None) -> Tensor:
        """x [n, F] of a new user (features `user`) with the item rows `items`, in the training pool's
        item context. factor_fold: the factor-table fold the user reads (a new user: data.factor_folds,
        the fit on every training rating); None: that fold where the source has a table, else no column."""
        if factor_fold is None and self.rows.factor_table is not None:
            factor_fold = self.factor_folds
        folds = None if factor_fold is None else torch.tensor([factor_fold], device=self.device)
        context = None if self.rows.context is None else self._context("train")
        return self._rows(self.user_codes(user)[None], folds, items, context)[0]

    # ---- evaluation (eval.ranking=catalog) ---------------------------------------------------------------
    def catalog(self, state: str) -> Catalog:
        """The state's catalogue: its item pool, each task's candidates (the pool less its support items:
        the query items are among them, unmarked) and relevant items (query items it rated >= liked_rating)."""
        t, rating_item, new = self.protocol.tasks[state], self.rows.rating_item, state in NEW_ITEM_STATES
        s_items = torch.where(t.support_mask.bool(), rating_item[t.support], -1)
        threshold = liked_rating(self.data.rating_scale)
        liked = t.query_mask.bool() & (self.rows.y[t.query] >= threshold)
        return Catalog(self.item_pool(new), s_items, torch.where(liked, rating_item[t.query], -1),
                       t.support_mask.sum(1).long(), "new items" if new else "existing items", self.n_items, threshold)

    def catalog_rows(self, state: str, tasks: slice, items: Tensor) -> Tensor:
        """x [tasks, N, F] of the state's tasks `tasks` with every item of `items`, in the state's item context."""
        reps = self.first_user[torch.as_tensor(self.protocol.tasks[state].users[tasks], device=self.device)]
        x, folds = self.rows.x, None
        if self.rows.factor_table is not None:  # a rating's table row is 1 + fold * items + item (factors.factor_rows)
            folds = (x[reps, -1] - 1 - self.rows.rating_item[reps]) // self.n_items
        context = None if self.rows.context is None else self._context(state)
        return self._rows(x[reps], folds, items, context)

    def catalog_floors(self, state: str, items: Tensor) -> dict[str, Tensor]:
        """Per-item scores [N] of the non-learned rankings (a user's own terms do not change the order):
        popularity (training ratings), popularity_transductive (training ratings and every support set of
        the state: the only count a new item has), bias and bias_transductive (the floors' item biases)."""
        b_t, count_t = self.floors.transductive_item_bias(self.protocol.tasks[state])
        return {"popularity": self.floors.item_count[items], "popularity_transductive": count_t[items],
                "bias": self.floors.item_bias[items], "bias_transductive": b_t[items]}
