"""What every inner loop shares, on the core path and the fast paths: its settings and the SGD update."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

Params = dict[str, Tensor]


@dataclass(frozen=True)
class InnerLoop:
    """How one adapt call runs: `steps` steps of rate `lr` from theta on each task's support set."""
    lr: float | Params  # one rate for every adapted weight, or Meta-SGD's learned rate per weight
    steps: int
    first_order: bool = False  # the inner gradients are constants: no second derivatives in the meta-gradient
    track: bool = True  # keep the graph back to theta (meta-training); False adapts detached copies (evaluation)
    adam: tuple[float, float] | None = None  # Adam's (beta1, beta2) instead of SGD, fresh moments per task (track=False)

    def lr_of(self, name: str) -> float | Tensor:
        return self.lr[name] if isinstance(self.lr, dict) else self.lr

    @property
    def create_graph(self) -> bool:
        """Whether the inner gradients keep their own graph (second-order meta-training)."""
        return self.track and not self.first_order


def scalar(lr) -> bool:
    """A plain-number rate (not Meta-SGD's learned tensor)."""
    return isinstance(lr, (int, float))


def sgd(w: Tensor, g: Tensor, lr: float | Tensor) -> Tensor:
    """w - lr g; one fused kernel for a plain-number rate."""
    return torch.add(w, g, alpha=-lr) if scalar(lr) else w - lr * g
