"""Ridge: each user's last layer solved in closed form (R2-D2, Bertinetto et al. 2019, for a squared
error; iMAML's proximal inner problem, solved exactly instead of by gradient steps).

The inner problem of task i, over its support set:
    w_i = argmin_w  sum_j m_j (r_j - phi_j . w)^2 + sum_d lambda_d (w_d - w0_d)^2
with phi_j = [net[:-1](h_j), 1] (the head's last hidden layer and a 1 for the bias), r_j = y_j - offset,
w0 the last layer's weights and bias (meta-learned: the prediction before any rating) and lambda
their prior precisions (meta-learned in log space with algo.learn_prior). It is least squares:
    w_i = (Phi^T M Phi + Lambda)^-1 (Phi^T M r + Lambda w0),
one batched Cholesky solve for all tasks, no Python per task. The meta-gradient of the query loss
flows through the solve to phi (encoder and hidden layers), w0 and lambda. With phi = [1] alone and
lambda = 3 this is the bias floor's user bias; the hidden layer adds per-user taste.

With data.item_factors, phi_j also holds the item's collaborative factors q_j (fixed, from the
meta-train users' ratings: metarec/data/factors.py), with their own prior weights (meta-learned) and
precision (algo.prior_precision_factors): the user's taste on them is a matrix factorisation's fold-in,
solved together with the last layer.

Papers: Bertinetto et al., ICLR 2019 (R2-D2: a closed-form ridge head); Rajeswaran et al., NeurIPS 2019
(iMAML's proximal inner problem). Departures: a squared error on ratings (R2-D2 regresses one-hot class
targets), per-dimension prior precisions, the prior mean w0 meta-learned (R2-D2 shrinks to zero), and
the item factors' columns. Inductive unless data.transductive or data.item_stats_transductive give its
inputs other tasks' support sets (the source records it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from metarec.algos.base import AlgoConfig, MetaLearner
from metarec.checks import rule
from metarec.engine import masked_task_loss
from metarec.errors import UserError
from metarec.models import MODELS
from metarec.tasks import TaskBatch


@dataclass
class RidgeConfig(AlgoConfig):
    """algo=ridge (conf/algo/ridge.yaml): the prior's keys, no gradient-step ones (inner_steps: one
    exact solve, which evaluation's later steps repeat)."""

    name: str = "ridge"
    prior_precision: float = rule(10.0, "> 0")  # lambda, the pull of a user's last-layer weights towards w0 ...
    prior_precision_bias: float = rule(3.0, "> 0")  # ... and of its bias (3: the bias floor's shrinkage)
    prior_precision_factors: Optional[float] = rule(None, "> 0")  # ... and of the item-factor weights (null = prior_precision)
    learn_prior: bool = True  # meta-learn one log lambda per last-layer weight


class Ridge(MetaLearner):
    Config = RidgeConfig
    data_kinds = ("rating", "regression")  # a squared error

    @classmethod
    def model_needs(cls, cfg) -> tuple[str, ...]:
        return ("last_layer",)

    def __init__(self, cfg, model: nn.Module, kind: str, compile: bool = False, fast_paths: bool = True):  # no inner steps
        if kind == "classification":
            raise ValueError("algo=ridge solves a squared error: it fits ratings or regression, not classification")
        if "last_layer" not in model.offers or model.last_layer().out_features != 1 or "prompt" in model.param_groups():
            fits = " or ".join(f"model={name}" for name, m in MODELS.items() if "last_layer" in m.offers)
            raise ValueError(f"algo=ridge needs a head MLP with one output and no prompt vectors ({fits})")
        last = model.last_layer()
        self.last = last
        self.n_factors = model.factor_dim
        factor_precision = cfg.prior_precision if cfg.prior_precision_factors is None else cfg.prior_precision_factors
        start = torch.cat([torch.full((last.in_features,), float(cfg.prior_precision)),
                           torch.full((self.n_factors,), float(factor_precision)),
                           torch.tensor([float(cfg.prior_precision_bias)])])
        self.log_prior = nn.Parameter(start.log().to(self.last.weight), requires_grad=bool(cfg.learn_prior))
        self.factor_prior = nn.Parameter(torch.zeros(self.n_factors).to(self.last.weight))  # a typical user's taste
        super().__init__(cfg, model, kind)

    def meta_parameters(self) -> list[Tensor]:
        return (super().meta_parameters() + ([self.factor_prior] if self.n_factors else [])
                + ([self.log_prior] if self.log_prior.requires_grad else []))

    def _offset(self) -> Tensor | float:
        return self.model.output_offset()

    def features(self, x: Tensor) -> Tensor:
        """phi [tasks, n, width + factors + 1]: the last hidden layer of every example, its item's
        collaborative factors (data.item_factors: a matrix factorisation's fold-in), and a 1."""
        hidden = self.model.last_hidden(x)
        q = self.model.factor_features(x) if self.n_factors else None
        return torch.cat([hidden] + ([] if q is None else [q.to(hidden)]) + [torch.ones_like(hidden[..., :1])], dim=-1)

    def prior(self) -> Tensor:
        """w0 [width + factors + 1]: the last layer's weights, the factors' prior weights, the last layer's bias."""
        return torch.cat([self.last.weight[0], self.factor_prior, self.last.bias])

    def solve(self, phi: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """Each task's ridge solution [tasks, p] on its support set (phi [tasks, n, p])."""
        lam, w0 = self.log_prior.exp(), self.prior()
        weighted = (phi * mask.unsqueeze(-1)).transpose(1, 2)  # [tasks, p, n]
        gram = torch.baddbmm(torch.diag(lam).expand(phi.shape[0], -1, -1), weighted, phi)
        rhs = torch.baddbmm((lam * w0).unsqueeze(-1).expand(phi.shape[0], -1, 1),
                            weighted, (y - self._offset()).unsqueeze(-1))
        try:
            chol = torch.linalg.cholesky(gram)
        except torch.linalg.LinAlgError:
            raise UserError(f"algo=ridge: a user's least-squares system is singular (prior precisions "
                            f"{lam.min().item():.3g} to {lam.max().item():.3g}): raise algo.prior_precision, "
                            f"algo.prior_precision_bias or algo.prior_precision_factors") from None
        return torch.cholesky_solve(rhs, chol).squeeze(-1)

    def predict(self, phi: Tensor, w: Tensor) -> Tensor:
        """Predictions [tasks, n] of phi [tasks, n, p] with weights w [tasks, p] or [p]."""
        w = w.expand(phi.shape[0], -1)  # the prior w0: the same weights for every task
        return self._offset() + (phi @ w.unsqueeze(-1)).squeeze(-1)

    def meta_loss(self, batch: TaskBatch) -> Tensor:
        w = self.solve(self.features(batch.support_x), batch.support_y, batch.support_mask)
        pred = self.predict(self.features(batch.query_x), w)
        return masked_task_loss(pred, batch.query_y, batch.query_mask, self.kind).mean()

    def adapt_trace(self, batch: TaskBatch, steps: int, at: list[int] | None = None) -> list[Tensor]:
        """Query predictions at 0..steps (or at `at`): the prior w0 at step 0, the solved weights after
        (the solve is exact, so one step and five are the same)."""
        with torch.no_grad():
            phi_q = self.features(batch.query_x)
            solved = self.predict(phi_q, self.solve(self.features(batch.support_x), batch.support_y, batch.support_mask))
            before = self.predict(phi_q, self.prior()) if at is None or 0 in at else None
        return [before if k == 0 else solved for k in range(steps + 1) if at is None or k in at]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "log_prior": self.log_prior.detach().clone(),
                "factor_prior": self.factor_prior.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.log_prior.copy_(state["log_prior"])
            self.factor_prior.copy_(state.get("factor_prior", self.factor_prior))
