"""Collaborative item factors from the meta-train users' ratings, cross-fitted (data.item_factors).

A biased matrix factorisation  r_ui ~ mu + b_u + b_i + p_u . q_i,  fitted by alternating ridge
solves (ALS) on the training ratings, gives every existing item a vector q_i that says which users
like it; a new user's taste on those vectors is then a small ridge problem on the support set
(the "fold-in" of a matrix factorisation), which algo=ridge solves exactly.

Cross-fitting keeps meta-training honest: a meta-train user's own ratings are in the training
ratings, so factors fitted on them already know the user's query ratings and a meta-learner would
learn to trust them more than it should at test time. The meta-train users are therefore dealt
into `folds` groups, and a user of group f reads the factors fitted without group f, from the same
random start, then rotated onto the full fit (a factorisation is only defined up to a rotation:
the rotation is all that the fold's own ratings touch). Every other user reads the full fit, which
never saw them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from metarec import progress
from metarec.signals import check_stop

USER_BIAS_PRECISION = 3.0  # the bias floor's shrinkage of a user's mean residual (floors.py, item_context.py)
ITEM_BIAS_PRECISION = 5.0  # ... and of an item's


ROWS_PER_CHUNK = 4096  # rows whose Gram matrices are built and solved at once: 4 MB at rank 10, in cache
ENTRIES_PER_CHUNK = 8192  # ratings whose outer products are summed at once: 8 MB at rank 10 (larger chunks ran slower)


@dataclass(frozen=True)
class Ratings:
    """The pattern of a sparse rating matrix [n_rows, n_cols]: entry e sits at (rows[e], cols[e]). A
    value per entry ([n], in this entry order) rides on it; nothing of size n_rows x n_cols is ever made."""

    rows: Tensor  # [n] long
    cols: Tensor  # [n] long
    n_rows: int
    n_cols: int

    @property
    def order(self) -> Tensor:
        """The entries sorted by row (stable), made once."""
        return self._cached("order", lambda: torch.argsort(self.rows, stable=True))

    @property
    def crow(self) -> Tensor:
        """[n_rows + 1]: row r's entries are order[crow[r]:crow[r + 1]] (CSR row pointers)."""
        return self._cached("crow", lambda: torch.cat([self.rows.new_zeros(1),
                                                       torch.bincount(self.rows, minlength=self.n_rows).cumsum(0)]))

    @property
    def sorted_rows(self) -> Tensor:
        return self._cached("sorted_rows", lambda: self.rows[self.order])

    @property
    def sorted_cols(self) -> Tensor:
        return self._cached("sorted_cols", lambda: self.cols[self.order])

    @property
    def T(self) -> "Ratings":
        """The same entries, in the same entry order, seen column by column."""
        return self._cached("t", lambda: Ratings(self.cols, self.rows, self.n_cols, self.n_rows))

    def _cached(self, name: str, make):
        memo = self.__dict__.setdefault("_memo", {})
        if name not in memo:
            memo[name] = make()
        return memo[name]

    def keep(self, entries: Tensor) -> "Ratings":
        """The entries `entries` (a mask or indices) picks, same shape."""
        return Ratings(self.rows[entries], self.cols[entries], self.n_rows, self.n_cols)


def ridge_rows(r: Ratings, target: Tensor, other: Tensor, reg: float, reg_bias: float) -> tuple[Tensor, Tensor]:
    """For each row u of r: argmin_{p, b} sum_{e in row u} (target_e - other_{col e} . p - b)^2
    + reg |p|^2 + reg_bias b^2, with target [n] (float64, entry order) and other [n_cols, k].
    Returns p [n_rows, k] and b [n_rows]. Each row's Gram matrix is the sum of its own entries' outer
    products (index_add in row order): O(n k^2) time; rows, and their entries, go in bounded chunks."""
    x = torch.cat([other, torch.ones_like(other[:, :1])], dim=1).to(torch.float64)  # [C, k + 1]
    k1 = x.shape[1]
    prior = torch.full((k1,), reg, dtype=torch.float64)
    prior[-1] = reg_bias
    order, crow = r.order, r.crow
    sol = torch.empty(r.n_rows, k1, dtype=torch.float64)
    for a in range(0, r.n_rows, ROWS_PER_CHUNK):
        b = min(a + ROWS_PER_CHUNK, r.n_rows)
        gram = torch.zeros(b - a, k1 * k1, dtype=torch.float64)  # [rows, (k + 1)^2]
        rhs = torch.zeros(b - a, k1, dtype=torch.float64)
        for lo in range(int(crow[a]), int(crow[b]), ENTRIES_PER_CHUNK):
            at = slice(lo, min(lo + ENTRIES_PER_CHUNK, int(crow[b])))
            xe, row, entries = x[r.sorted_cols[at]], r.sorted_rows[at] - a, order[at]  # [E, k + 1], [E], [E]
            gram.index_add_(0, row, (xe.unsqueeze(2) * xe.unsqueeze(1)).reshape(len(xe), -1))
            rhs.index_add_(0, row, xe * target[entries].unsqueeze(1))
        low = torch.linalg.cholesky(gram.reshape(-1, k1, k1) + torch.diag(prior))
        sol[a:b] = torch.cholesky_solve(rhs.unsqueeze(-1), low).squeeze(-1)
    return sol[:, :-1], sol[:, -1]


def als(r: Ratings, ratings: Tensor, mu: float, rank: int, reg: float, iters: int,
        start: Tensor) -> tuple[Tensor, Tensor]:
    """Biased matrix factorisation of the ratings [n] (float64, entry order) on the pattern r, from
    item factors `start` [n_cols, rank]. Returns the item factors [n_cols, rank] and item biases
    [n_cols]; an item no entry touches gets zeros."""
    q, b_item = start.clone(), torch.zeros(r.n_cols, dtype=torch.float64)
    resid = ratings.to(torch.float64) - mu
    for _ in progress.bar(range(iters), desc=f"factorise {r.n_rows}x{r.n_cols} (ALS)", unit="sweep"):
        check_stop()  # a stop request takes effect between sweeps (and so between folds and floor fits)
        p, b_user = ridge_rows(r, resid - b_item[r.cols], q, reg, USER_BIAS_PRECISION)
        q, b_item = ridge_rows(r.T, resid - b_user[r.rows], p, reg, ITEM_BIAS_PRECISION)
    return q, b_item


def seeded_start(n_items: int, rank: int, seed: int) -> Tensor:
    """ALS's first item factors [n_items, rank], from a generator of their own (the global RNG stays untouched)."""
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(n_items, rank, generator=g, dtype=torch.float64)


def rotate_onto(q: Tensor, target: Tensor) -> Tensor:
    """q @ R with R the rotation that brings q closest to target (orthogonal Procrustes)."""
    u, _, vh = torch.linalg.svd(q.T @ target)
    return q @ (u @ vh)


def cross_fitted(users: Tensor, items: Tensor, ratings: Tensor, n_users: int, n_items: int, mu: float,
                 fold_of_user: Tensor, folds: int, rank: int, reg: float, iters: int = 15,
                 seed: int = 0) -> Tensor:
    """Item factor tables [folds + 1, n_items, rank] from the training ratings (users, items,
    ratings: [n] each): table f < folds is fitted without the users whose fold_of_user [n_users] is
    f, then rotated onto table `folds`, the fit on every training rating. float64 on the CPU.
    The item biases stay out: the model learns an item's standing from its context (data.item_stats),
    which a new item has too, rather than from a column that only existing items fill."""
    r, ratings = Ratings(users, items, n_users, n_items), ratings.to(torch.float64)
    start = seeded_start(n_items, rank, seed)
    full, _ = als(r, ratings, mu, rank, reg, iters, start)
    tables = []
    for f in range(folds):
        keep = fold_of_user[users] != f
        q, _ = als(r.keep(keep), ratings[keep], mu, rank, reg, iters, start)  # the same start: nothing of fold f
        tables.append(rotate_onto(q, full))
    return torch.stack(tables + [full])


def factor_rows(rating_user: np.ndarray, rating_item: np.ndarray, rating: np.ndarray, n_users: int, n_items: int,
                pool_users: np.ndarray, train_ratings: np.ndarray, mu: float, rank: int, reg: float, folds: int,
                seed: int) -> tuple[Tensor, np.ndarray]:
    """data.item_factors over a rating table ([ratings] each): the factor table [1 + (folds + 1) * n_items,
    rank] (row 0: no factors; then one row per (fold, item)) and each rating's row in it, 1 + fold * n_items
    + item: the meta-train users `pool_users` are dealt into folds, everyone else reads fold `folds`."""
    fold = np.full(n_users, folds, dtype=np.int64)  # everyone outside the pool reads the full fit
    deal = np.random.default_rng([seed, 7])  # a stream of its own: the split's draws stay as they are
    fold[pool_users] = deal.permutation(len(pool_users)) % folds
    tr = train_ratings
    tables = cross_fitted(torch.from_numpy(rating_user[tr]), torch.from_numpy(rating_item[tr]),
                          torch.from_numpy(rating[tr].astype(np.float64)), n_users, n_items, mu,
                          torch.from_numpy(fold), folds, rank, reg, seed=seed)
    flat = tables.flatten(0, 1).float()
    return torch.cat([flat.new_zeros(1, flat.shape[1]), flat]), 1 + fold[rating_user] * n_items + rating_item
