"""Reptile: several SGD (or Adam) steps per task from theta, then theta moves towards the mean adapted weights.

Paper: Nichol, Achiam and Schulman 2018, "On First-Order Meta-Learning Algorithms". Implemented: the
serial/batched version, the mean of (theta'_i - theta) over the meta-batch as the outer step (or, with
algo.outer=adam, fed to Adam as a gradient). Departures: on MeLU's rating tasks with a squared error
around the training mean, and a separate algo.eval_steps for evaluation; the paper's tasks are images.
Inductive: a task's predictions read its own support set and the training ratings only."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from metarec.algos.base import AlgoConfig
from metarec.algos.maml import MAML
from metarec.checks import parse, rule
from metarec.engine import InnerLoop, masked_task_loss
from metarec.tasks import TaskBatch


def betas(v) -> str | None:
    """The rule of algo.inner_betas: Adam's two betas."""
    v = list(v)
    return None if len(v) == 2 and parse("each in [0, 1)")(v) is None else "must be two numbers in [0, 1), e.g. [0.0, 0.999]"


@dataclass
class ReptileConfig(AlgoConfig):
    """algo=reptile (conf/algo/reptile.yaml): no meta-gradient, so no first_order or learn_inner_lr."""

    name: str = "reptile"
    inner_lr: float = rule(0.1, "> 0")  # the inner steps' learning rate (SGD or Adam)
    inner_params: str = "mlp"  # the model's parameter group the inner loop adapts (and theta moves)
    outer: str = rule("adam", "one of interpolate, adam")  # interpolate (theta += beta * mean delta) | adam (delta as a gradient)
    inner_optimizer: str = rule("sgd", "one of sgd, adam")  # sgd | adam (lr inner_lr, moments fresh per task; also at evaluation)
    inner_betas: list[float] = rule([0.0, 0.999], betas)  # inner Adam's betas (the paper: beta1=0)
    anneal_steps: Optional[int] = rule(None, ">= 1")  # beta decays linearly to 0 over N meta-steps (the paper); null = constant


class Reptile(MAML):
    """theta <- theta + beta * mean_i(theta'_i - theta): the difference is fed to the outer optimizer
    as a gradient, plain SGD with lr beta (algo.outer=interpolate, the paper's update) or Adam.
    algo.inner_optimizer=adam: the inner steps (and the adaptation at evaluation) are Adam's, with
    fresh moments per task; algo.anneal_steps: beta decays linearly to 0 over that many meta-steps."""

    Config = ReptileConfig

    def __init__(self, cfg, model: nn.Module, kind: str, compile: bool = False, fast_paths: bool = True):
        super().__init__(cfg, model, kind, compile, fast_paths)
        if cfg.outer == "interpolate":
            self.optimizer = torch.optim.SGD(self.meta_parameters(), lr=cfg.meta_lr)
        self.meta_steps = 0  # meta-updates so far (the annealing's clock; saved with the checkpoint)

    def learns_inner_lr(self) -> bool:
        return False  # no meta-gradient to learn the rates with

    def inner_adam(self) -> tuple[float, float] | None:
        """Adam's (beta1, beta2) with algo.inner_optimizer=adam; None for SGD."""
        if self.cfg.inner_optimizer != "adam":
            return None
        beta1, beta2 = (float(b) for b in self.cfg.inner_betas)
        return beta1, beta2

    def step(self, batch: TaskBatch) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        params = self.params()
        data = batch.merged()  # Reptile trains each task on all of its data
        h = self.engine.features(params, data.support_x)
        loop = InnerLoop(self.cfg.inner_lr, self.cfg.inner_steps, first_order=True, track=False, adam=self.inner_adam())
        fast = self.engine.adapt(params, h.detach(), data.support_y, data.support_mask, loop)
        fast = {n: w.detach() for n, w in fast.items()}
        # Weights the inner loop does not adapt (e.g. the encoder when only the head adapts) get
        # the ordinary gradient of the tasks' loss at the adapted weights.
        loss = masked_task_loss(self.engine.predict(params, fast, h), data.support_y, data.support_mask, self.kind).mean()
        if loss.requires_grad:
            loss.backward()
        for n, w in fast.items():
            params[n].grad = params[n].detach() - w.mean(0)  # theta - mean theta'_i
        anneal = self.cfg.anneal_steps
        if anneal:  # the paper's schedule: beta * (1 - step / anneal_steps), step counted from 0
            for group in self.optimizer.param_groups:
                group["lr"] = self.cfg.meta_lr * max(0.0, 1.0 - self.meta_steps / anneal)
        self.apply_update()
        self.meta_steps += 1
        return {"loss": loss.item()}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "meta_steps": self.meta_steps}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.meta_steps = int(state.get("meta_steps", 0))
