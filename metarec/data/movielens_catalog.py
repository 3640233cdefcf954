"""Model input rows for any (user, item) pair of a MovieLens source, not only the rated ones: the
catalogue ranking of evaluation (eval.ranking=catalog, metarec/evaluation/ranking.py) and `metarec recommend`
(metarec/serve/api.py) score every item of the catalogue for a user.

A row is laid out as a training row (movielens.py's rows_batch; features.Features.rows): the user's codes,
the item's codes, the user's and the item's multi-hot flags, the two item context codes after the
first n_base columns (data.item_stats) and the factor-table row last (data.item_factors). The user's
and the item's columns are read off one of their ratings, so they carry the training encoding by
construction; a new user's are encoded from the features given (MovieLens' gender, age, occupation,
zip), or take the meta-train users' most common codes (any data set).

Item context: an evaluation state reads the one its query rows read (the training pool and every
support set of the state); a new user (recommend) reads the training pool's, the context the model
was trained on. A new item that no training user rated has no context (codes 0), as in meta-training.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from metarec.data.movielens_features import AGE_EDGES
from metarec.errors import UserError

USER_COLUMNS = ("gender", "age", "occupation", "zip")  # MovieLens' user codes, the first columns of its rows
LIKED = 4.0  # a query rating at or above it makes the item relevant in the catalogue ranking
NEW_ITEM_STATES = ("item_cold", "user_item_cold", "val_new", "val_item_cold")  # their catalogue: new items; the others: existing ones


@dataclass
class Catalog:
    """One state's catalogue ranking problem: every task ranks the same items. Each task's candidates and
    relevant items are kept as its own item lists, and made into [tasks, N] masks a chunk of tasks at a
    time (masks), so nothing of size tasks x items outlives a chunk."""

    items: Tensor  # [N] item rows: the state's item pool (existing or new items with at least one rating)
    support_items: Tensor  # [tasks, S] item rows of the support set (-1: padding): not candidates
    liked_items: Tensor  # [tasks, Q] item rows of the query items rated >= LIKED (-1: none): relevant
    support_size: Tensor  # [tasks] ratings in the support set
    pool: str  # what the items are, in words ("existing items", "new items")
    n_items: int  # item rows of the data set

    def masks(self, tasks: slice) -> tuple[Tensor, Tensor]:
        """candidate [t, N] (a pool item not in the task's support set) and relevant [t, N] (a query item
        rated >= LIKED), bool, for the tasks `tasks`."""
        where = torch.full((self.n_items + 1,), len(self.items), dtype=torch.long, device=self.items.device)
        where[self.items] = torch.arange(len(self.items), device=self.items.device)  # pool position; N: none or padding
        out = []
        for listed, fill in ((self.support_items[tasks], True), (self.liked_items[tasks], False)):
            at = where[torch.where(listed >= 0, listed, self.n_items)]  # [t, S] positions, N where none
            mask = torch.full((len(listed), len(self.items) + 1), fill, dtype=torch.bool, device=listed.device)
            out.append(mask.scatter_(1, at, not fill)[:, :-1])
        return out[0], out[1]

    @property
    def candidate(self) -> Tensor:
        """[tasks, N] for every task at once (small data and tests; evaluation asks masks per chunk)."""
        return self.masks(slice(None))[0]

    @property
    def relevant(self) -> Tensor:
        return self.masks(slice(None))[1]


class CatalogRows:
    """Mixed into MovieLensTasks (it reads raw, features, x, tasks, new_item, factor_table, item_count... of
    the source), for MovieLens and data=atomic alike."""

    def _user_mask(self) -> Tensor:
        """[F] bool: the columns of a feature row (self.x without the factor column) that are the user's."""
        f = self.features
        n_user, n_item = f.user.shape[1], f.item.shape[1]
        mask = torch.zeros(n_user + n_item + f.user_multi.shape[1] + f.item_multi.shape[1], dtype=torch.bool)
        mask[:n_user] = True
        mask[n_user + n_item:n_user + n_item + f.user_multi.shape[1]] = True
        return mask.to(self.device)

    def _first_ratings(self) -> tuple[Tensor, Tensor]:
        """One rating of each user and of each item (-1 where there is none): where their columns are read."""
        if not hasattr(self, "_first"):
            firsts = []
            for of, n in ((self.raw.rating_user, self.raw.num_users), (self.raw.rating_item, self.raw.num_items)):
                first = np.full(n, -1, dtype=np.int64)
                first[of[::-1]] = np.arange(len(of))[::-1]  # the last write wins: the first rating
                firsts.append(torch.from_numpy(first).to(self.device))
            self._first = tuple(firsts)
        return self._first

    def item_pool(self, new: bool) -> Tensor:
        """Item rows with at least one rating, released after the cut (new=True) or not."""
        rated = self._first_ratings()[1] >= 0
        is_new = torch.from_numpy(np.asarray(self.new_item, dtype=bool)).to(self.device)
        return torch.nonzero(rated & (is_new == new)).flatten()

    def _context_table(self, members: Tensor) -> Tensor:
        """Item context codes [items, 2] from the ratings `members` (none of the asking user's)."""
        _, total, count = self._item_sums(members)
        return self._context_codes(total, count)

    def _rows(self, user_x: Tensor, folds: Tensor | None, items: Tensor, context: Tensor | None) -> Tensor:
        """x [users, N, F] of every (user, item) pair: user_x [users, F'] (a feature row of each user: only
        its user columns are read), folds [users] (the factor table's fold each user reads, None without a
        table), items [N], context [items, 2] or None."""
        mask = self._user_mask()
        n_users, n, width = user_x.shape[0], len(items), mask.numel()
        item_x = self.x[self._first_ratings()[1][items], :width]  # [N, F']
        rows = torch.where(mask, user_x[:, None, :width], item_x[None])  # [users, N, F']
        parts = [rows]
        if context is not None:
            b = self.n_base
            parts = [rows[..., :b], context[items][None].expand(n_users, n, -1), rows[..., b:]]
        if folds is not None:
            parts.append((1 + folds[:, None] * self.raw.num_items + items[None])[..., None])
        return torch.cat(parts, -1)

    # ---- a new user (metarec recommend, metarec.load) ----------------------------------------------------
    def _common_user(self) -> Tensor:
        """A feature row [F'] whose user columns are the meta-train users' most common codes (made once)."""
        if not hasattr(self, "_common"):
            first_user, mask = self._first_ratings()[0], self._user_mask()
            pool = self.x[first_user[torch.as_tensor(self.pool_users, device=self.device)], :mask.numel()]
            self._common = pool.mode(0).values
        return self._common

    def _user_vocab(self) -> dict[str, dict[str, int]]:
        """MovieLens: per user feature, raw value -> code (made once)."""
        if not hasattr(self, "_vocab"):
            first_user, raw, prefix = self._first_ratings()[0], self.raw, int(self.cfg.zip_prefix)
            values = {"gender": [g.upper() for g in raw.user_gender], "occupation": raw.user_occupation,
                      "zip": [z[:prefix] if z[:prefix].isdigit() else "x" for z in raw.user_zip]}
            rated = torch.nonzero(first_user >= 0).flatten().tolist()
            codes = self.x[first_user[rated], :len(USER_COLUMNS)].tolist()
            self._vocab = {name: {values[name][u]: c[USER_COLUMNS.index(name)] for u, c in zip(rated, codes)}
                           for name in values}
        return self._vocab

    def user_codes(self, features: dict | None = None) -> Tensor:
        """A new user's feature row [F'] (only its user columns count) from MovieLens' {gender, age,
        occupation, zip} (raw values as in the data's user table; ages in years), data=atomic's from its user
        fields by name. A feature not given takes the most common code among the meta-train users."""
        features = {k: v for k, v in (features or {}).items() if v not in (None, "")}
        codes = self._common_user().clone()
        return self._feature_codes(features, codes) if features else codes

    def _feature_codes(self, features: dict, codes: Tensor) -> Tensor:
        """MovieLens' features into `codes` (data=atomic reads its own fields: atomic.py)."""
        unknown = set(features) - set(USER_COLUMNS)
        if unknown:
            raise UserError(f"user feature {sorted(unknown)[0]!r} is not one of {', '.join(USER_COLUMNS)}")
        vocab = self._user_vocab()
        for j, name in enumerate(USER_COLUMNS):
            if name not in features:
                continue
            value = str(features[name]).strip()
            if name == "age":
                if value.startswith("-") and value[1:].strip().isdigit():
                    raise UserError(f"user feature age={value} is negative: give the user's age in years (e.g. age=25)")
                if not value.isdigit():
                    raise UserError(f"user feature age={value!r} is not a whole number of years (e.g. age=25)")
                codes[j] = int(np.searchsorted(AGE_EDGES, int(value), side="right")) + 1
                continue
            key = value.upper() if name == "gender" else value[:self.cfg.zip_prefix] if name == "zip" else value
            if key not in vocab[name]:
                options = sorted(vocab[name])
                raise UserError(f"user feature {name}={features[name]!r} is not in the data set's user table "
                                f"(it has {', '.join(options[:25])}{' ...' if len(options) > 25 else ''})")
            codes[j] = vocab[name][key]
        return codes

    def item_labels(self) -> tuple[list, list[str]]:
        """The data set's own id and a title of every item row (MovieLens: movie ids and titles)."""
        ids = self.raw.item_id if self.raw.item_id is not None else np.arange(1, self.raw.num_items + 1)
        return [int(i) for i in ids], list(self.raw.item_title)

    def item_rows(self, items: Tensor, user: dict | None = None, factor_fold: int | None = None) -> Tensor:
        """x [n, F] of a new user (features `user`) with the item rows `items`, in the training pool's
        item context. factor_fold: the factor-table fold the user reads (a new user: data.factor_folds,
        the fit on every training rating); None: that fold where the source has a table, else no column."""
        if factor_fold is None and self.factor_table is not None:
            factor_fold = self.cfg.factor_folds
        folds = None if factor_fold is None else torch.tensor([factor_fold], device=self.device)
        context = None
        if self.cfg.item_stats:
            if not hasattr(self, "_train_table"):
                self._train_table = self._context_table(torch.from_numpy(self.train_ratings).to(self.device))
            context = self._train_table
        return self._rows(self.user_codes(user)[None], folds, items, context)[0]

    # ---- evaluation (eval.ranking=catalog) ---------------------------------------------------------------
    def catalog(self, state: str) -> Catalog:
        """The state's catalogue: its item pool, each task's candidates (the pool less its support items:
        the query items are among them, unmarked) and relevant items (query items it rated >= LIKED)."""
        t, n_items = self.tasks[state], self.raw.num_items
        items = self.item_pool(state in NEW_ITEM_STATES)
        s_items = torch.where(t.support_mask.bool(), self.rating_item[t.support], -1)
        liked = t.query_mask.bool() & (self.y[t.query] >= LIKED)
        new = state in NEW_ITEM_STATES
        return Catalog(items, s_items, torch.where(liked, self.rating_item[t.query], -1), t.support_mask.sum(1).long(),
                       "new items" if new else "existing items", n_items)

    def catalog_rows(self, state: str, tasks: slice, items: Tensor) -> Tensor:
        """x [tasks, N, F] of the state's tasks `tasks` with every item of `items`, in the state's item context."""
        first_user = self._first_ratings()[0]
        reps = first_user[torch.as_tensor(self.tasks[state].users[tasks], device=self.device)]
        folds = None
        if self.factor_table is not None:  # a rating's table row is 1 + fold * items + item (movielens._item_factors)
            folds = (self.x[reps, -1] - 1 - self.rating_item[reps]) // self.raw.num_items
        context = None
        if self.cfg.item_stats:
            cache = self.__dict__.setdefault("_state_tables", {})
            if state not in cache:
                cache[state] = self._context_table(self._state_members(state))
            context = cache[state]
        return self._rows(self.x[reps], folds, items, context)

    def catalog_floors(self, state: str, items: Tensor) -> dict[str, Tensor]:
        """Per-item scores [N] of the non-learned rankings (a user's own terms do not change the order):
        popularity (training ratings), popularity_transductive (training ratings and every support set of
        the state: the only count a new item has), bias and bias_transductive (the floors' item biases)."""
        b_t, count_t = self._transductive_item_bias(self.tasks[state])
        return {"popularity": self.item_count[items], "popularity_transductive": count_t[items],
                "bias": self.item_bias[items], "bias_transductive": b_t[items]}
