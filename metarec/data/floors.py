"""The non-learned floors of a rating source, on the same tasks as the methods: the global mean, the
user's mean, the bias floor (mu + b_u + b_i, shrunk biases from the training ratings) and its
transductive twin (item biases pooled from every support set of the state too), and the MF floors
(mf_floors.py), cached by what they read (floor_cache.py)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from metarec.data import floor_cache, mf_floors
from metarec.data.factors import ITEM_BIAS_PRECISION, USER_BIAS_PRECISION
from metarec.data.protocol import Protocol
from metarec.data.ratings import RatingTable
from metarec.data.split import EvalTasks
from metarec.tasks import INDUCTIVE, TRANSDUCTIVE

NAMES = ("global_mean", "user_mean", "bias", "bias_transductive", "mf_foldin", "mf_transductive")
TRANSDUCTIVE_FLOORS = ("bias_transductive", "mf_transductive")  # they read every support set of the state


class Floors:
    """The floors of one source: the training ratings' item biases once, the MF factorisation when a
    state's floors are not in the cache, then each state's floors from its tasks."""

    def __init__(self, table: RatingTable, protocol: Protocol, y: Tensor, rating_item: Tensor, fingerprint: str,
                 settings: mf_floors.MFSettings):
        """y, rating_item [ratings] on the source's device; settings: the MF floors' (data.mf_*)."""
        self.table, self.protocol, self.y, self.rating_item = table, protocol, y, rating_item
        self.mu, self.fingerprint, self.settings = protocol.mu, fingerprint, settings
        train = protocol.train_ratings
        resid = table.rating[train] - self.mu
        items = table.rating_item[train]
        total = np.bincount(items, weights=resid, minlength=table.num_items)
        count = np.bincount(items, minlength=table.num_items)
        self.item_total = torch.from_numpy(total.astype(np.float32)).to(y.device)  # [items] over the training ratings
        self.item_count = torch.from_numpy(count.astype(np.float32)).to(y.device)
        self.item_bias = self.item_total / (self.item_count + ITEM_BIAS_PRECISION)  # shrunk towards 0
        self._mf: mf_floors.MFFloors | None = None  # the training factorisation, made on the first cache miss

    def __call__(self, t: EvalTasks) -> dict[str, Tensor]:
        """Query predictions [tasks, Q] of every floor on the tasks t."""
        yq, b_qi = self.y[t.query], self.item_bias[self.rating_item[t.query]]
        ys, user_bias = self.user_bias(t)
        n_s = t.support_mask.sum(1, keepdim=True).clamp(min=1)
        user_mean = ys.sum(1, keepdim=True) / n_s
        b_t, _ = self.transductive_item_bias(t)
        b_ts, b_tq = b_t[self.rating_item[t.support]], b_t[self.rating_item[t.query]]
        user_bias_t = ((ys - (self.mu + b_ts) * t.support_mask).sum(1, keepdim=True)) / (n_s + USER_BIAS_PRECISION)
        return {
            "global_mean": torch.full_like(yq, self.mu),
            "user_mean": user_mean.expand_as(yq),
            "bias": self.mu + user_bias + b_qi,
            "bias_transductive": self.mu + user_bias_t + b_tq,
            **self.mf(t),
        }

    @staticmethod
    def classes() -> dict[str, str]:
        """Each floor's input class: bias_transductive pools every support set of the state
        (transductive_item_bias), mf_transductive factorises them jointly (mf_floors.transductive_floor);
        the rest read training ratings and the task's own support set."""
        return {name: TRANSDUCTIVE if name in TRANSDUCTIVE_FLOORS else INDUCTIVE for name in NAMES}

    def user_bias(self, t: EvalTasks) -> tuple[Tensor, Tensor]:
        """Support ratings [tasks, S] (0 at padding) and the bias floor's user bias [tasks, 1]."""
        ys = self.y[t.support] * t.support_mask
        n_s = t.support_mask.sum(1, keepdim=True).clamp(min=1)
        b_si = self.item_bias[self.rating_item[t.support]]
        return ys, ((ys - (self.mu + b_si) * t.support_mask).sum(1, keepdim=True)) / (n_s + USER_BIAS_PRECISION)

    def transductive_item_bias(self, t: EvalTasks) -> tuple[Tensor, Tensor]:
        """bias_transductive's item biases [items] and the counts they rest on: item residuals pooled from
        training ratings and every support set of the tasks t (never a query), so new items get a bias
        from other users' support ratings."""
        ys, user_bias = self.user_bias(t)
        items = self.rating_item[t.support].flatten()
        resid = ((ys - (self.mu + user_bias) * t.support_mask) * t.support_mask).flatten()
        total = self.item_total.index_add(0, items, resid)
        count = self.item_count.index_add(0, items, t.support_mask.flatten())
        return total / (count + ITEM_BIAS_PRECISION), count

    def mf(self, t: EvalTasks) -> dict[str, Tensor]:
        """mf_foldin and mf_transductive (mf_floors.py) on the tasks t: [tasks, Q] each."""
        train = self.protocol.train_ratings

        def compute() -> dict[str, Tensor]:
            if self._mf is None:
                self._mf = mf_floors.MFFloors(self.settings, self.table, train, self.mu)
            return self._mf(t.support, t.support_mask, t.query)

        k = floor_cache.key(self.fingerprint, train, t.support, t.support_mask, t.query, self.mu, self.settings)
        return {name: pred.to(self.y) for name, pred in floor_cache.cached(k, tuple(t.query.shape), compute).items()}

