"""The item context (data.item_stats): per rating, its item's mean residual (less each rater's bias,
shrunk) and its count over OTHER users' ratings, bucketed into two categorical columns; for
meta-training from a random share of the training pool per episode, at evaluation from the training
pool (inductive), or with data.item_stats_transductive also from every support set of the state (never
a query; the source records it: input_class)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from metarec.data.factors import ITEM_BIAS_PRECISION, USER_BIAS_PRECISION
from metarec.data.protocol import Protocol

BIAS_EDGES = np.round(np.arange(-1.5, 1.51, 0.15), 2)  # item context: shrunk mean residual (on a 1-5 scale: bias_edges) ...
COUNT_EDGES = [1, 2, 4, 8, 16, 32, 64, 128]  # ... and number of ratings it rests on
FIELDS = [("item_bias", len(BIAS_EDGES) + 2), ("item_count", len(COUNT_EDGES) + 2)]  # the two columns' vocabularies


def bias_edges(scale: tuple[float, float]) -> np.ndarray:
    """BIAS_EDGES in the data set's rating units: rating points on 1-5, stretched with the scale's span (a
    0-10 scale's edges run -3.75..3.75), so the buckets cover the same share of the scale on any data set."""
    return BIAS_EDGES * (scale[1] - scale[0]) / 4


class ItemContext:
    """The item context of one source's ratings: `tables` [ratings, 2] per evaluation state (and "train",
    the training pool's), `episode` a fresh one per training episode, `table` an item's codes from any ratings."""

    def __init__(self, y: Tensor, rating_user: Tensor, rating_item: Tensor, n_users: int, n_items: int,
                 protocol: Protocol, scale: tuple[float, float], supports: bool):
        """y, rating_user, rating_item [ratings] on one device; supports: data.item_stats_transductive."""
        self.y, self.rating_user, self.rating_item, self.device = y, rating_user, rating_item, y.device
        self.n_users, self.n_items, self.protocol, self.scale, self.supports = n_users, n_items, protocol, scale, supports
        self.mu, self.shrink = protocol.mu, ITEM_BIAS_PRECISION
        pool = torch.from_numpy(protocol.train_ratings).to(self.device)
        self.tables = {"train": self.columns(pool, pool)}
        for state, t in protocol.tasks.items():
            support = t.support[t.support_mask.bool()]
            rows = torch.cat([support, t.query[t.query_mask.bool()]]).unique()
            self.tables[state] = self.columns(self.members(state), rows)

    def members(self, state: str) -> Tensor:
        """The ratings a state's item context reads: the training pool, and with data.item_stats_transductive
        every support set of the state (the state's rows are then transductive)."""
        pool = torch.from_numpy(self.protocol.train_ratings).to(self.device)
        if not self.supports:
            return pool
        in_pool = torch.zeros(len(self.y), dtype=torch.bool, device=self.device)
        in_pool[pool] = True
        t = self.protocol.tasks[state]
        support = t.support[t.support_mask.bool()]
        return torch.cat([pool, support[~in_pool[support]]])

    def columns(self, members: Tensor, rows: Tensor) -> Tensor:
        """Item context of `rows` from the ratings `members` (each row leaves its own rating out):
        the item's mean of (rating - mu - the rater's bias), shrunk, and its count, bucketed. Removing
        each rater's bias (as the bias_transductive floor does) keeps a new item seen by a few users
        from inheriting their leniency. [ratings, 2], zeros off `rows`."""
        debiased, total, count = self.sums(members)
        member = torch.zeros(len(self.y), dtype=torch.bool, device=self.device)
        member[members] = True
        it, own = self.rating_item[rows], member[rows].float()
        out = torch.zeros(len(self.y), 2, dtype=torch.long, device=self.device)
        out[rows] = self.codes(total[it] - own * debiased[rows], count[it] - own)
        return out

    def table(self, members: Tensor) -> Tensor:
        """Item context codes [items, 2] from the ratings `members` (none of the asking user's)."""
        _, total, count = self.sums(members)
        return self.codes(total, count)

    def sums(self, members: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Each rating's residual less its rater's bias [ratings], and per item their sum and count over `members`."""
        resid = self.y - self.mu
        users, items = self.rating_user[members], self.rating_item[members]
        u_total = torch.zeros(self.n_users, device=self.device).index_add(0, users, resid[members])
        u_count = torch.zeros(self.n_users, device=self.device).index_add(0, users, torch.ones_like(resid[members]))
        user_bias = u_total / (u_count + USER_BIAS_PRECISION)
        debiased = resid - user_bias[self.rating_user]  # [ratings]
        total = torch.zeros(self.n_items, device=self.device).index_add(0, items, debiased[members])
        count = torch.zeros(self.n_items, device=self.device).index_add(0, items, torch.ones_like(debiased[members]))
        return debiased, total, count

    def codes(self, t: Tensor, c: Tensor) -> Tensor:
        """Sums t and counts c of debiased residuals -> the two item-context codes [n, 2] (0: no rating)."""
        mean = t / (c + self.shrink)
        edges = torch.as_tensor(bias_edges(self.scale), dtype=mean.dtype, device=self.device)
        bias = torch.where(c > 0, torch.bucketize(mean, edges) + 1, torch.zeros_like(c, dtype=torch.long))
        count = torch.bucketize(c, torch.as_tensor(COUNT_EDGES, dtype=c.dtype, device=self.device), right=True)
        return torch.stack([bias, count], 1)

    def episode(self, rows: Tensor, generator: torch.Generator) -> Tensor:
        """Training item context from a random share (uniform in [0.05, 1], drawn per episode) of the
        meta-train users. New items are seen at evaluation only through a few users' support sets, so
        small counts must also occur for popular items in training, not only for obscure ones."""
        p = self.protocol
        share = 0.05 + 0.95 * torch.rand((), generator=generator).item()
        chosen = (torch.rand(len(p.pool_users), generator=generator) < share).to(self.device)  # [pool users]
        members = p.pool_flat[chosen[p.pool_owner]]  # = pool[chosen][pool_mask[chosen]], in the same order
        if len(members) == 0:
            members = p.pool[:1][p.pool_mask[:1].bool()]
        return self.columns(members, rows.flatten().unique())
