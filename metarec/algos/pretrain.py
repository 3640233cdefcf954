"""The non-meta baseline: ordinary supervised training on meta-train ratings; at evaluation it is
fine-tuned on each support set with the same inner loop as the meta-learners.

No paper: the baseline DESIGN.md asks for (MeLU's comparison without meta-learning). Inductive."""
from __future__ import annotations

from dataclasses import dataclass

from metarec.algos.base import AlgoConfig
from metarec.algos.maml import MAML
from metarec.checks import rule
from metarec.engine import masked_task_loss
from metarec.tasks import TaskBatch


@dataclass
class PretrainConfig(AlgoConfig):
    """algo=pretrain (conf/algo/pretrain.yaml): meta_lr is the supervised training's, the rest fine-tuning's."""

    name: str = "pretrain"
    inner_lr: float = rule(0.01, "> 0")  # fine-tuning lr at evaluation
    inner_params: str = "mlp"  # the model's parameter group fine-tuning adapts
    # inner_steps / eval_steps (AlgoConfig): fine-tuning steps for the headline metric


class Pretrain(MAML):
    Config = PretrainConfig

    def learns_inner_lr(self) -> bool:
        return False  # no meta-gradient to learn the rates with

    def step(self, batch: TaskBatch) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        data = batch.merged()
        x = data.support_x
        pred = self.model(x.flatten(0, 1))  # one plain forward over every example of every task
        pred = pred.view(*x.shape[:2], *pred.shape[1:])  # [tasks, n, ...]
        loss = masked_task_loss(pred, data.support_y, data.support_mask, self.kind)
        # Weight tasks by their size: an ordinary mean over ratings, not over users.
        weight = data.support_mask.sum(1)
        loss = (loss * weight).sum() / weight.sum()
        loss.backward()
        self.apply_update()
        return {"loss": loss.item()}
