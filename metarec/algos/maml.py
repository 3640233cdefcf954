"""MAML (second order, or first order with algo.first_order=true) and Meta-SGD's learned inner rates.

Papers: Finn et al., ICML 2017 (MAML, FOMAML); Li et al. 2017 (Meta-SGD); on MeLU's model and protocol
it is MeLU (Lee et al., KDD 2019; experiment=melu_*_paper: the decision layers adapted, 5 local steps).
Implemented: algo.inner_steps SGD steps on each support set from theta (the parameters of
algo.inner_params), the query loss of the adapted weights as the meta-loss, Adam on theta.
Departures: squared error around the training mean (the model's offset); each task's inner loss is
divided by its own support size (DESIGN.md, "Pitfalls"); MeLU's public code cuts the graph between local
steps (load_state_dict): ours is the true second-order gradient; model selection on validation users.
Inductive: a task's predictions read its own support set and the training ratings only."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metarec.algos.base import AlgoConfig, MetaLearner, adapted_names
from metarec.checks import rule
from metarec.engine import Engine, InnerLoop, Params, masked_task_loss
from metarec.tasks import TaskBatch


@dataclass
class MAMLConfig(AlgoConfig):
    """algo=maml (conf/algo/maml.yaml); also what algo=prompt builds on."""

    name: str = "maml"
    inner_lr: float = rule(0.1, "> 0")  # alpha
    first_order: bool = False  # FOMAML: drop the inner gradients' graph
    inner_params: str = "mlp"  # the model's parameter group the inner loop adapts: mlp | all | prompt
    learn_inner_lr: bool = False  # Meta-SGD: per-parameter inner learning rates, meta-learned


class MAML(MetaLearner):
    """theta'_i = theta - alpha * grad L_S(theta) (x inner_steps); meta-loss = mean_i L_Q(theta'_i)."""

    Config = MAMLConfig

    def __init__(self, cfg, model: nn.Module, kind: str, compile: bool = False, fast_paths: bool = True):
        self.cfg, self.model, self.kind = cfg, model, kind  # read by inner_params() and inner_adam()
        self.inner_adam()  # bad settings fail here, not at the first step
        self.engine = Engine(model, adapted_names(model, self.inner_params()), kind, compile=compile, fast_paths=fast_paths)
        # Meta-SGD: one learned inner rate per adapted weight, initialised at alpha.
        self.inner_lrs = nn.ParameterDict({
            n.replace(".", "__"): nn.Parameter(torch.full_like(p, cfg.inner_lr))
            for n, p in model.named_parameters() if n in self.engine.inner_names
        }) if self.learns_inner_lr() else None
        super().__init__(cfg, model, kind)

    def learns_inner_lr(self) -> bool:
        """Meta-SGD (algo.learn_inner_lr); subclasses without a meta-gradient for the rates say False."""
        return self.cfg.learn_inner_lr

    def inner_params(self) -> str:
        return self.cfg.inner_params

    def meta_parameters(self) -> list[Tensor]:
        return super().meta_parameters() + (list(self.inner_lrs.parameters()) if self.inner_lrs is not None else [])

    def inner_lr(self) -> float | Params:
        if self.inner_lrs is None:
            return self.cfg.inner_lr
        return {k.replace("__", "."): v for k, v in self.inner_lrs.items()}

    def inner_adam(self) -> tuple[float, float] | None:
        """Adam's (beta1, beta2) when the inner loop is Adam (reptile's algo.inner_optimizer=adam); None: SGD."""
        return None

    def params(self) -> Params:
        return dict(self.model.named_parameters())

    def meta_loss(self, batch: TaskBatch) -> Tensor:
        """Mean query loss after adaptation; backward() of it is the meta-gradient."""
        params = self.params()
        # Tasks sorted by support size: the engine pads groups of similar size apart without a gather
        # (the mean over tasks does not depend on their order).
        batch = batch.select(batch.support_mask.sum(1).argsort(stable=True))
        h_query = self.engine.features(params, batch.query_x)
        # the engine encodes the support set itself, per group of similar size (x=, not h)
        loop = InnerLoop(self.inner_lr(), self.cfg.inner_steps, self.cfg.first_order)
        pred = self.engine.adapt_predict(params, None, batch.support_y, batch.support_mask, loop, h_query,
                                         x=batch.support_x)
        return masked_task_loss(pred, batch.query_y, batch.query_mask, self.kind).mean()

    def adapt_trace(self, batch: TaskBatch, steps: int, at: list[int] | None = None) -> list[Tensor]:
        """Query predictions after 0..steps adaptation steps on each task's support set (no meta-graph);
        with `at`, only after the steps it lists (a query forward per step is what a long trace costs)."""
        params = {n: p.detach() for n, p in self.params().items()}
        lr = self.inner_lr()
        lr = {n: v.detach() for n, v in lr.items()} if isinstance(lr, dict) else lr
        with torch.no_grad():
            h_support = self.engine.features(params, batch.support_x)
            h_query = self.engine.features(params, batch.query_x)
        loop = InnerLoop(lr, steps, first_order=True, track=False, adam=self.inner_adam())
        return self.engine.adapt_trace(params, h_support, batch.support_y, batch.support_mask, loop, h_query, at)

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.inner_lrs is not None:
            state["inner_lrs"] = self.inner_lrs.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.inner_lrs is not None:
            self.inner_lrs.load_state_dict(state["inner_lrs"])
