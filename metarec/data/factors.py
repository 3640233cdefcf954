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

import torch
from torch import Tensor

from metarec import progress

USER_BIAS_PRECISION = 3.0  # the bias floor's shrinkage of a user's mean residual (movielens.py reads it too)
ITEM_BIAS_PRECISION = 5.0  # ... and of an item's


def _ridge_rows(mask: Tensor, target: Tensor, other: Tensor, reg: float, reg_bias: float) -> tuple[Tensor, Tensor]:
    """For each row u of mask [U, I]: argmin_{p, b} sum_i mask_ui (target_ui - other_i . p - b)^2
    + reg |p|^2 + reg_bias b^2, with other [I, k]. Returns p [U, k] and b [U]."""
    x = torch.cat([other, torch.ones_like(other[:, :1])], dim=1)  # [I, k + 1]
    k1 = x.shape[1]
    outer = (x.unsqueeze(2) * x.unsqueeze(1)).reshape(len(x), -1)  # [I, (k + 1)^2]
    prior = torch.full((k1,), reg, dtype=x.dtype, device=x.device)
    prior[-1] = reg_bias
    gram = (mask @ outer).reshape(-1, k1, k1) + torch.diag(prior)
    rhs = (mask * target) @ x  # [U, k + 1]
    sol = torch.cholesky_solve(rhs.unsqueeze(-1), torch.linalg.cholesky(gram)).squeeze(-1)
    return sol[:, :-1], sol[:, -1]


def als(ratings: Tensor, mask: Tensor, mu: float, rank: int, reg: float, iters: int,
        start: Tensor) -> tuple[Tensor, Tensor]:
    """Biased matrix factorisation of ratings [U, I] where mask [U, I] is 1, from item factors
    `start` [I, rank]. Returns the item factors [I, rank] and item biases [I]; an item no rating in
    the mask touches gets zeros."""
    q, b_item = start.clone(), torch.zeros(ratings.shape[1], dtype=ratings.dtype, device=ratings.device)
    resid = ratings - mu
    for _ in progress.bar(range(iters), desc=f"factorise {ratings.shape[0]}x{ratings.shape[1]} (ALS)", unit="sweep"):
        p, b_user = _ridge_rows(mask, resid - b_item, q, reg, USER_BIAS_PRECISION)
        q, b_item = _ridge_rows(mask.T, (resid - b_user.unsqueeze(1)).T, p, reg, ITEM_BIAS_PRECISION)
    return q, b_item


def dense_ratings(rows: Tensor, items: Tensor, ratings: Tensor, n_rows: int, n_items: int) -> tuple[Tensor, Tensor]:
    """The ratings (rows, items, ratings: [n] each) as a float64 matrix [n_rows, n_items] and its 0/1 mask."""
    dense = torch.zeros(n_rows, n_items, dtype=torch.float64)
    mask = torch.zeros_like(dense)
    dense[rows, items] = ratings.to(torch.float64)
    mask[rows, items] = 1.0
    return dense, mask


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
    dense, mask = dense_ratings(users, items, ratings, n_users, n_items)
    start = seeded_start(n_items, rank, seed)
    full, _ = als(dense, mask, mu, rank, reg, iters, start)
    tables = []
    for f in range(folds):
        keep = (fold_of_user != f).to(mask.dtype).unsqueeze(1)
        q, _ = als(dense, mask * keep, mu, rank, reg, iters, start)  # the same start: nothing of fold f
        tables.append(rotate_onto(q, full))
    return torch.stack(tables + [full])
