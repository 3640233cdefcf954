"""Reptile: several SGD (or Adam) steps per task from theta, then theta moves towards the mean adapted weights."""
from __future__ import annotations

import torch
from torch import nn

from metarec.algos.maml import MAML
from metarec.engine import InnerLoop, masked_task_loss
from metarec.tasks import TaskBatch


class Reptile(MAML):
    """theta <- theta + beta * mean_i(theta'_i - theta): the difference is fed to the outer optimizer
    as a gradient, plain SGD with lr beta (algo.outer=interpolate, the paper's update) or Adam.
    algo.inner_optimizer=adam: the inner steps (and the adaptation at evaluation) are Adam's, with
    fresh moments per task; algo.anneal_steps: beta decays linearly to 0 over that many meta-steps."""

    inner_optimizers = ("sgd", "adam")

    def __init__(self, cfg, model: nn.Module, kind: str, compile: bool = False, fast_paths: bool = True):
        if cfg.learn_inner_lr:
            raise ValueError("algo.learn_inner_lr=true is for maml and prompt: Reptile has no meta-gradient for it")
        super().__init__(cfg, model, kind, compile, fast_paths)
        if cfg.outer == "interpolate":
            self.optimizer = torch.optim.SGD(self.meta_parameters(), lr=cfg.meta_lr)
        elif cfg.outer != "adam":
            raise ValueError(f"algo.outer={cfg.outer!r} is not one of interpolate, adam")
        self.meta_steps = 0  # meta-updates so far (the annealing's clock; saved with the checkpoint)

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
        anneal = self.cfg.get("anneal_steps")
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
