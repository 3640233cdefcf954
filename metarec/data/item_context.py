"""The item context of MovieLensTasks (data.item_stats): per rating, its item's mean residual (less
each rater's bias, shrunk) and its count over OTHER users' ratings, bucketed into two categorical
columns; for meta-training from a random share of the training pool per episode, at evaluation from
the training pool (inductive), or with data.item_stats_transductive also from every support set of the
state (never a query; the source records it: input_class)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from metarec.data.factors import USER_BIAS_PRECISION

BIAS_EDGES = np.round(np.arange(-1.5, 1.51, 0.15), 2)  # item context: shrunk mean residual (on a 1-5 scale: bias_edges) ...
COUNT_EDGES = [1, 2, 4, 8, 16, 32, 64, 128]  # ... and number of ratings it rests on


def bias_edges(scale: tuple[float, float]) -> np.ndarray:
    """BIAS_EDGES in the data set's rating units: rating points on 1-5, stretched with the scale's span (a
    0-10 scale's edges run -3.75..3.75), so the buckets cover the same share of the scale on any data set."""
    return BIAS_EDGES * (scale[1] - scale[0]) / 4


class ItemContext:
    """Mixed into MovieLensTasks (it reads x, y, mu, raw, tasks, train_ratings, pool, bias_shrink...)."""

    def _item_context(self) -> dict[str, Tensor]:
        """Per rating, its item's mean residual and its count over OTHER users' ratings in the same
        context: the training pool for meta-training (re-drawn per episode, see _train_context); at
        evaluation the pool (plus every support set of the state: data.item_stats_transductive). Two
        categorical columns."""
        pool = torch.from_numpy(self.train_ratings).to(self.device)
        self.rating_user = torch.from_numpy(self.raw.rating_user).to(self.device)
        # the pool's ratings in its row order and each one's row: an episode's share is a mask over them,
        # not over the padded pool (heavy users pad it to ~10x the ratings on ml-1m)
        real = self.pool_mask.bool()
        self.pool_flat = self.pool[real]
        self.pool_owner = torch.arange(len(self.pool), device=self.device).unsqueeze(1).expand_as(real)[real]
        context = {"train": self._stat_columns(pool, pool)}
        for state, t in self.tasks.items():
            support = t.support[t.support_mask.bool()]
            rows = torch.cat([support, t.query[t.query_mask.bool()]]).unique()
            context[state] = self._stat_columns(self._state_members(state), rows)
        return context

    def _state_members(self, state: str) -> Tensor:
        """The ratings a state's item context reads: the training pool, and with data.item_stats_transductive
        every support set of the state (recorded in supports_read: the state's rows become transductive)."""
        pool = torch.from_numpy(self.train_ratings).to(self.device)
        if not self.cfg.item_stats_transductive:
            return pool
        self.supports_read.add(state)
        in_pool = torch.zeros(len(self.y), dtype=torch.bool, device=self.device)
        in_pool[pool] = True
        t = self.tasks[state]
        support = t.support[t.support_mask.bool()]
        return torch.cat([pool, support[~in_pool[support]]])

    def _stat_columns(self, members: Tensor, rows: Tensor, out: Tensor | None = None) -> Tensor:
        """Item context of `rows` from the ratings `members` (each row leaves its own rating out):
        the item's mean of (rating - mu - the rater's bias), shrunk, and its count, bucketed. Removing
        each rater's bias (as the bias_transductive floor does) keeps a new item seen by a few users
        from inheriting their leniency. Written into `out` ([ratings, 2], zeros) at `rows`."""
        debiased, total, count = self._item_sums(members)
        member = torch.zeros(len(self.y), dtype=torch.bool, device=self.device)
        member[members] = True
        it, own = self.rating_item[rows], member[rows].float()
        out = torch.zeros(len(self.y), 2, dtype=torch.long, device=self.device) if out is None else out
        out[rows] = self._context_codes(total[it] - own * debiased[rows], count[it] - own)
        return out

    def _item_sums(self, members: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Each rating's residual less its rater's bias [ratings], and per item their sum and count over `members`."""
        resid = self.y - self.mu
        n_users, n_items = self.raw.num_users, self.raw.num_items
        users, items = self.rating_user[members], self.rating_item[members]
        u_total = torch.zeros(n_users, device=self.device).index_add(0, users, resid[members])
        u_count = torch.zeros(n_users, device=self.device).index_add(0, users, torch.ones_like(resid[members]))
        user_bias = u_total / (u_count + USER_BIAS_PRECISION)
        debiased = resid - user_bias[self.rating_user]  # [ratings]
        total = torch.zeros(n_items, device=self.device).index_add(0, items, debiased[members])
        count = torch.zeros(n_items, device=self.device).index_add(0, items, torch.ones_like(debiased[members]))
        return debiased, total, count

    def _context_codes(self, t: Tensor, c: Tensor) -> Tensor:
        """Sums t and counts c of debiased residuals -> the two item-context codes [n, 2] (0: no rating)."""
        mean = t / (c + self.bias_shrink)
        edges = torch.as_tensor(bias_edges(self.rating_scale), dtype=mean.dtype, device=self.device)
        bias = torch.where(c > 0, torch.bucketize(mean, edges) + 1, torch.zeros_like(c, dtype=torch.long))
        count = torch.bucketize(c, torch.as_tensor(COUNT_EDGES, dtype=c.dtype, device=self.device), right=True)
        return torch.stack([bias, count], 1)

    def _train_context(self, rows: Tensor, generator: torch.Generator) -> Tensor:
        """Training item context from a random share (uniform in [0.05, 1], drawn per episode) of the
        meta-train users. New items are seen at evaluation only through a few users' support sets, so
        small counts must also occur for popular items in training, not only for obscure ones."""
        share = 0.05 + 0.95 * torch.rand((), generator=generator).item()
        chosen = (torch.rand(len(self.pool_users), generator=generator) < share).to(self.device)  # [pool users]
        members = self.pool_flat[chosen[self.pool_owner]]  # = pool[chosen][pool_mask[chosen]], in the same order
        if len(members) == 0:
            members = self.pool[:1][self.pool_mask[:1].bool()]
        return self._stat_columns(members, rows.flatten().unique())
