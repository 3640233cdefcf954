"""The matrix-factorisation floors: what a plain collaborative model reaches on the same tasks.

mf_foldin: a biased factorisation  r_ui ~ mu + b_u + b_i + p_u . q_i  fitted by ALS on the training
ratings (the meta-train users'); each task's b_u and p_u are then solved on its own support set by
ridge (the "fold-in"), and its query ratings predicted. A new item has no training rating, so it
gets b_i = 0 and q_i = 0: on new items this floor is mu + the task's own bias.

mf_transductive: the support ratings of every task in the state join the factorisation, each task
as a row of its own (as bias_transductive pools them: never a query rating), so a new item gets
factors and a bias from the other users' support ratings of it. The task's row is then its fold-in
onto the jointly fitted items.

Everything is float64 on the CPU and sparse: each row's (and item's) normal equations are summed from
its own ratings (factors.Ratings), so time and memory grow with the ratings, never with rows x items. The shrinkages of the biases are the bias
floor's (factors.py); rank and the factors' shrinkages are data.mf_* (chosen on validation users,
docs/tuning.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from metarec.data.factors import USER_BIAS_PRECISION, Ratings, als, ridge_rows, seeded_start


@dataclass(frozen=True)
class MFSettings:
    rank: int = 10  # factors per user and item
    reg: float = 10.0  # ALS: the ridge penalty of the factors fitted on the training ratings
    foldin_reg: float = 3.0  # mf_foldin: the penalty of a task's own factors, solved on its support
    transductive_reg: float = 10.0  # mf_transductive: the penalty of every factor in the joint fit
    iters: int = 15  # ALS sweeps

    @classmethod
    def of(cls, cfg, unit: float = 1.0) -> "MFSettings":
        """The settings data.mf_* give (ProtocolConfig, which declares their ranges); the ridge penalties in
        squared rating units, stretched by `unit` (the scale's span over 1-5's: MovieLens' are unchanged)."""
        return cls(cfg.mf_rank, cfg.mf_reg * unit, cfg.mf_foldin_reg * unit, cfg.mf_transductive_reg * unit)


@dataclass
class MFFit:
    mu: float
    item_factors: Tensor  # q [items, rank]
    item_bias: Tensor  # b_i [items]
    row_factors: Tensor  # p [rows, rank]
    row_bias: Tensor  # b_u [rows]


def fit(rows: Tensor, items: Tensor, ratings: Tensor, n_rows: int, n_items: int, mu: float, rank: int,
        reg: float, iters: int, seed: int = 0) -> MFFit:
    """ALS on the ratings (rows, items, ratings: [n] each) from a seeded start, then every row's
    fold-in onto the final items (what ALS's next row half-step would give)."""
    r, ratings = Ratings(rows, items, n_rows, n_items), ratings.to(torch.float64)
    q, b_item = als(r, ratings, mu, rank, reg, iters, seeded_start(n_items, rank, seed))
    p, b_row = ridge_rows(r, ratings - mu - b_item[items], q, reg, USER_BIAS_PRECISION)
    return MFFit(mu, q, b_item, p, b_row)


def fold_in(model: MFFit, items: Tensor, y: Tensor, mask: Tensor, reg: float,
            reg_bias: float = USER_BIAS_PRECISION) -> tuple[Tensor, Tensor]:
    """Each task's (p, b) by ridge on its support set: items, y, mask [tasks, S] -> p [tasks, rank], b [tasks]."""
    q = model.item_factors[items]  # [tasks, S, rank]
    phi = torch.cat([q, torch.ones_like(q[..., :1])], -1) * mask.unsqueeze(-1)  # [tasks, S, rank + 1]
    target = (y - model.mu - model.item_bias[items]) * mask
    prior = torch.full((phi.shape[-1],), float(reg), dtype=phi.dtype)
    prior[-1] = reg_bias
    gram = phi.transpose(1, 2) @ phi + torch.diag(prior)  # [tasks, rank + 1, rank + 1]
    rhs = (phi.transpose(1, 2) @ target.unsqueeze(-1))  # [tasks, rank + 1, 1]
    sol = torch.cholesky_solve(rhs, torch.linalg.cholesky(gram)).squeeze(-1)
    return sol[:, :-1], sol[:, -1]


def predict(model: MFFit, p: Tensor, b: Tensor, items: Tensor) -> Tensor:
    """mu + b_u + b_i + p_u . q_i for each task's items [tasks, Q]."""
    q = model.item_factors[items]  # [tasks, Q, rank]
    return model.mu + b.unsqueeze(1) + model.item_bias[items] + (p.unsqueeze(1) * q).sum(-1)


def foldin_floor(model: MFFit, support: tuple[Tensor, Tensor, Tensor], query_items: Tensor, reg: float) -> Tensor:
    """mf_foldin's query predictions [tasks, Q]; support = (items, y, mask) [tasks, S] each."""
    p, b = fold_in(model, *support, reg)
    return predict(model, p, b, query_items)


def transductive_floor(train: tuple[Tensor, Tensor, Tensor], n_users: int, n_items: int, mu: float,
                       support: tuple[Tensor, Tensor, Tensor], query_items: Tensor, settings: MFSettings,
                       seed: int = 0) -> Tensor:
    """mf_transductive's query predictions [tasks, Q]: train = (users, items, ratings) [n] each, the
    training ratings; support = (items, y, mask) [tasks, S], each task a row after the n_users users."""
    items_s, y_s, mask_s = support
    n_tasks = items_s.shape[0]
    task_row = (n_users + torch.arange(n_tasks)).unsqueeze(1).expand_as(items_s)
    seen = mask_s.bool()
    rows = torch.cat([train[0], task_row[seen]])
    items = torch.cat([train[1], items_s[seen]])
    ratings = torch.cat([train[2].to(torch.float64), y_s[seen].to(torch.float64)])
    model = fit(rows, items, ratings, n_users + n_tasks, n_items, mu, settings.rank, settings.transductive_reg,
                settings.iters, seed)
    return predict(model, model.row_factors[n_users:], model.row_bias[n_users:], query_items)


class MFFloors:
    """Both floors over one rating table (ratings.RatingTable) and its training ratings' indices: the
    training factorisation once, then each state's floors from its tasks' rating indices."""

    def __init__(self, settings: MFSettings, raw, train_ratings: np.ndarray, mu: float):
        self.settings, self.mu = settings, mu
        self.n_users, self.n_items = raw.num_users, raw.num_items
        self.item = torch.from_numpy(raw.rating_item)  # [ratings]
        self.y = torch.from_numpy(raw.rating.astype(np.float64))
        tr = torch.from_numpy(train_ratings)
        self.train = (torch.from_numpy(raw.rating_user)[tr], self.item[tr], self.y[tr])
        self.model = fit(*self.train, self.n_users, self.n_items, mu, settings.rank, settings.reg, settings.iters)

    def __call__(self, support: Tensor, support_mask: Tensor, query: Tensor) -> dict[str, Tensor]:
        """{mf_foldin, mf_transductive}: query predictions [tasks, Q] from rating indices [tasks, S] / [tasks, Q]."""
        s, mask, q = support.cpu(), support_mask.cpu().double(), query.cpu()
        sets = (self.item[s], self.y[s] * mask, mask)
        return {"mf_foldin": foldin_floor(self.model, sets, self.item[q], self.settings.foldin_reg),
                "mf_transductive": transductive_floor(self.train, self.n_users, self.n_items, self.mu, sets,
                                                      self.item[q], self.settings)}
