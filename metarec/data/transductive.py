"""The exact transductive input for new items (data.transductive): what the ratings visible in a state
say about each item, as float features every model can read.

In MeLU's protocol every evaluation user's support set is known at test time, so a new item in a
state has the ratings the other users' support sets give it (the bias_transductive floor reads them).
`Visible` lists those ratings for one state (TaskSource.visible): for "train" the meta-train ratings,
for any other state its tasks' support ratings. This module turns them into a context per rating
(user u, item i) of that state's tasks, computed from the visible ratings of the state (plus the
training ratings, as the floor pools them) with every rating of user u left out, so a support rating
never sees itself and a task never sees its own ratings:

  item_bias   the item's mean residual over the other raters, each rating less mu and its rater's
              bias (shrunk as the bias floor shrinks them), shrunk by the bias floor's item precision;
              the bias_transductive floor's item term, left-one-user-out (exact)
  (the number of those ratings stays out: data.item_stats gives it, bucketed, and a per-user weight
  on it, as algo=ridge solves, only overfits)
  q_1..q_k    the item's factors from a biased matrix factorisation (ALS, rank data.trans_rank) of the
              visible ratings, cross-fitted: a user of fold f reads the fit without fold f's users,
              rotated onto the full fit (as metarec/data/factors.py does for training factors: the
              rotation is the one thing the fold's own ratings touch)

Training reads the same context computed the same way from the training ratings alone (each
meta-train user left out of his own), so a model learns the input it gets at test time. A new item's
context rests on few ratings (on ml-100k's user_item_cold a median of 16, against 78 for a training
rating's item), so with data.trans_shares training has one block per share, each from the training
ratings of that share of the meta-train users, and every training task reads one drawn at random:
the model meets contexts as thin as those at test time (the bucketed data.item_stats does the same
per episode). A user's
training ratings and his support ratings in a state are separate rows of the factorisation (a
user's taste on existing items is not his taste on new ones: DESIGN.md, "New items on ml-1m").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from metarec.data.factors import ITEM_BIAS_PRECISION, USER_BIAS_PRECISION, Ratings, als, rotate_onto, seeded_start
from metarec.data.protocol import Protocol
from metarec.data.ratings import RatingTable
from metarec.tasks import Visible

FEATURES = ("item_bias",)  # then q_1..q_rank


@dataclass(frozen=True)
class TransSettings:
    rank: int = 10  # factors per item in the context
    reg: float = 10.0  # ALS ridge penalty of every factor
    folds: int = 5  # cross-fitting: a user reads the factors fitted without his fold
    iters: int = 10  # ALS sweeps
    shares: tuple[float, ...] = (1.0,)  # training's blocks: each from this share of the meta-train users

    @classmethod
    def of(cls, cfg, unit: float = 1.0) -> "TransSettings":
        """The settings data.trans_* give (ProtocolConfig, which declares their ranges); the penalty in
        squared rating units, stretched by `unit` (the scale's span over 1-5's), as the floors' are."""
        return cls(cfg.trans_rank, cfg.trans_reg * unit, cfg.trans_folds, shares=tuple(cfg.get("trans_shares", (1.0,))))

    @property
    def width(self) -> int:
        return len(FEATURES) + self.rank


def pooled(train: Visible, state: Visible | None, n_users: int) -> tuple[Visible, Tensor]:
    """The training ratings and the state's support ratings that are not training ratings (warm
    supports are), each with its factorisation row: a training rating's row is its user, a state
    rating's is n_users + its user."""
    if state is None:
        return train, train.users.clone()
    fresh = ~torch.isin(state.rows, train.rows)
    more = state.select(fresh)
    both = Visible(torch.cat([train.users, more.users]), torch.cat([train.items, more.items]),
                   torch.cat([train.ratings, more.ratings]), torch.cat([train.rows, more.rows]))
    return both, torch.cat([train.users, n_users + state.users[fresh]])


def left_out_bias(seen: Visible, row: Tensor, users: Tensor, items: Tensor, mu: float,
                  n_items: int) -> tuple[Tensor, Tensor]:
    """item_bias and the raw count [n] of (users, items) [n] from the ratings `seen` (rows `row`),
    each target's own user's rating of its item left out."""
    y = seen.ratings.double()
    n_rows = int(row.max()) + 1 if len(row) else 1
    r_total = torch.zeros(n_rows, dtype=torch.float64).index_add(0, row, y - mu)
    r_count = torch.zeros(n_rows, dtype=torch.float64).index_add(0, row, torch.ones_like(y))
    debiased = y - mu - (r_total / (r_count + USER_BIAS_PRECISION))[row]
    total = torch.zeros(n_items, dtype=torch.float64).index_add(0, seen.items, debiased)
    count = torch.zeros(n_items, dtype=torch.float64).index_add(0, seen.items, torch.ones_like(y))
    keys, at_key = torch.unique(seen.users * n_items + seen.items, return_inverse=True)  # (user, item) pairs
    key_total = torch.zeros(len(keys), dtype=torch.float64).index_add(0, at_key, debiased)
    key_count = torch.zeros(len(keys), dtype=torch.float64).index_add(0, at_key, torch.ones_like(y))
    want = users * n_items + items
    at = torch.searchsorted(keys, want).clamp(max=max(len(keys) - 1, 0))
    own = (keys[at] == want).double() if len(keys) else torch.zeros_like(want, dtype=torch.float64)
    own_total, own_count = own * key_total[at], own * key_count[at]
    c = count[items] - own_count
    return (total[items] - own_total) / (c + ITEM_BIAS_PRECISION), c


def cross_fitted_items(seen: Visible, row: Tensor, users: Tensor, items: Tensor, mu: float, n_users: int,
                       n_items: int, settings: TransSettings, seed: int) -> Tensor:
    """q [n, rank]: each target (users, items) reads its item's factors fitted without its user's fold."""
    rows, row_index = torch.unique(row, return_inverse=True)
    r, ratings = Ratings(row_index, seen.items, len(rows), n_items), seen.ratings.to(torch.float64)
    fold_of_user = torch.from_numpy(np.random.default_rng([seed, 18]).permutation(n_users) % settings.folds)
    start = seeded_start(n_items, settings.rank, seed)
    full, _ = als(r, ratings, mu, settings.rank, settings.reg, settings.iters, start)
    out = torch.zeros(len(users), settings.rank, dtype=torch.float64)
    fold_of_row = fold_of_user[rows % n_users]
    fold_of_target = fold_of_user[users]
    for f in range(settings.folds):  # a handful of factorisations, not a loop over tasks
        here = fold_of_target == f
        if not here.any():
            continue
        keep = fold_of_row[row_index] != f
        q, _ = als(r.keep(keep), ratings[keep], mu, settings.rank, settings.reg, settings.iters, start)
        out[here] = rotate_onto(q, full)[items[here]]
    return out


def thinned(train: Visible, share: float, n_users: int, seed: int, block: int) -> Visible:
    """The training ratings of a random `share` of their users (all of them for share 1)."""
    if share >= 1:
        return train
    chosen = torch.from_numpy(np.random.default_rng([seed, 19, block]).random(n_users) < share)
    return train.select(chosen[train.users])


def context(train: Visible, state: Visible | None, users: Tensor, items: Tensor, mu: float, n_users: int,
            n_items: int, settings: TransSettings, seed: int = 0) -> Tensor:
    """The transductive context [n, settings.width] (float64) of the ratings (users, items) [n] of one
    state's tasks, from the training ratings `train` and the state's support ratings `state` (None
    for training itself), every target's own user left out."""
    seen, row = pooled(train, state, n_users)
    bias, _ = left_out_bias(seen, row, users, items, mu, n_items)
    cols = [bias.unsqueeze(1)]
    if settings.rank:
        cols.append(cross_fitted_items(seen, row, users, items, mu, n_users, n_items, settings, seed))
    return torch.cat(cols, dim=1)


@dataclass
class Sources:
    """What the side table is computed from: the rating table and its protocol, and the item factors'
    table with each rating's row in it (data.item_factors; None without), carried into the side table."""

    table: RatingTable
    protocol: Protocol
    factor_table: Tensor | None  # [rows, rank] on `device`
    factor_rows: Tensor | None  # [ratings] long on `device`
    device: torch.device


def _targets(protocol: Protocol, state: str) -> Tensor:
    """The rating indices whose context `state` gives: training's the pool's, a state's its tasks' ratings."""
    if state == "train":
        return torch.from_numpy(protocol.train_ratings)
    t = protocol.tasks[state]
    return torch.cat([t.support[t.support_mask.bool()], t.query[t.query_mask.bool()]]).cpu()


def side_table(sources: Sources, settings: TransSettings, seed: int) -> tuple[Tensor, dict[str, Tensor]]:
    """The side table [rows, item factors + settings.width] (row 0: none) and, per rating, its row in it:
    {"train": [ratings], "eval": [ratings]} long, 0 where none. One block for training (the pool's
    ratings, from the training ratings), one per evaluation state (its tasks' ratings, from the training
    ratings and the state's support ratings). A rating is in one state's tasks at most, so one "eval"
    index serves every state; a warm support rating has a training row too. With several
    settings.shares, training's blocks follow each other (the first one's rows are "train"; share k's are
    those plus k times the pool's size: a training episode draws k per task, rows.py)."""
    raw, p, device = sources.table, sources.protocol, sources.device
    n = len(raw.rating)
    rows = {"train": torch.zeros(n, dtype=torch.long), "eval": torch.zeros(n, dtype=torch.long)}
    blocks, next_row, train = [], 1, p.visible(raw, "train")
    jobs = [("train", thinned(train, s, raw.num_users, seed, k), None, k == 0) for k, s in enumerate(settings.shares)]
    for state, seen, shown, indexed in jobs + [(s, train, p.visible(raw, s), True) for s in p.tasks]:
        targets = _targets(p, state)
        if not len(targets):
            continue
        users, items = torch.from_numpy(raw.rating_user)[targets], torch.from_numpy(raw.rating_item)[targets]
        ctx = context(seen, shown, users, items, p.mu, raw.num_users, raw.num_items, settings, seed)
        old = ([] if sources.factor_table is None
               else [sources.factor_table[sources.factor_rows[targets.to(device)]].cpu().double()])
        blocks.append(torch.cat(old + [ctx], 1))
        if indexed:  # training's later blocks are reached by a shift of the first one's rows
            rows["train" if state == "train" else "eval"][targets] = next_row + torch.arange(len(targets))
        next_row += len(targets)
    flat = torch.cat(blocks).float()
    table = torch.cat([flat.new_zeros(1, flat.shape[1]), flat]).to(device)
    return table, {k: v.to(device) for k, v in rows.items()}
