"""The one functional inner loop: every algorithm and the evaluation adapt task batches through it.

Tasks are batched: each adapted parameter gets a leading task dimension ([tasks, *shape]), the
forward pass runs under torch.func.vmap over padded tasks, and the per-task gradients come from
one autograd call on the sum of the tasks' losses (tasks are independent, so d(sum)/d(w_i) is
task i's gradient). Parameters that the inner loop does not adapt are never copied per task, and
when only the head is adapted the encoder runs once per batch, outside the loop.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

Params = dict[str, Tensor]


def masked_task_loss(pred: Tensor, y: Tensor, mask: Tensor, kind: str) -> Tensor:
    """Per-task mean loss over the real examples: [tasks]. Each task divides by its own mask sum,
    so padding never shrinks the effective inner learning rate."""
    if kind == "classification":  # pred [tasks, n, classes]
        per_example = F.cross_entropy(pred.flatten(0, 1), y.flatten(), reduction="none").view_as(mask)
    else:  # pred [tasks, n]
        per_example = (pred - y) ** 2
    return (per_example * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class Engine:
    """Adapts a model's `inner_names` parameters per task; `kind` picks the loss."""

    def __init__(self, model: nn.Module, inner_names: list[str], kind: str, compile: bool = False):
        self.model, self.kind = model, kind
        self.inner_names = list(inner_names)
        # Only the head adapts: run the encoder once per batch and vmap the head alone.
        self.head_only = all(n.startswith("head.") for n in self.inner_names)
        self.module = model.head if self.head_only else model
        self.prefix = "head." if self.head_only else ""
        self._vmapped = vmap(self._forward_one, in_dims=(0, None, 0))
        if compile:
            self._vmapped = torch.compile(self._vmapped, dynamic=True)

    def _forward_one(self, fast: Params, shared: Params, h: Tensor) -> Tensor:
        return functional_call(self.module, {**shared, **fast}, (h,), strict=False)

    def features(self, params: Params, x: Tensor) -> Tensor:
        """What the adapted part of the model reads: encoder output (head-only) or raw inputs."""
        if not self.head_only:
            return x
        enc = {k[len("encoder."):]: v for k, v in params.items() if k.startswith("encoder.")}
        return functional_call(self.model.encoder, enc, (x,))

    def predict(self, params: Params, fast: Params, h: Tensor) -> Tensor:
        """Predictions for every task with its own fast weights: [tasks, n, ...]. Buffers and
        parameters missing from both dicts come from the module itself."""
        p = len(self.prefix)
        shared = {k[p:]: v for k, v in params.items() if k.startswith(self.prefix) and k not in fast}
        return self._vmapped({k[p:]: v for k, v in fast.items()}, shared, h)

    def init_fast(self, params: Params, n_tasks: int, track: bool) -> Params:
        """Per-task views of theta (no copy); with track=False a detached copy that needs grad."""
        fast = {}
        for n in self.inner_names:
            w = params[n] if track else params[n].detach()
            w = w.unsqueeze(0).expand(n_tasks, *w.shape)
            fast[n] = w if track and w.requires_grad else w.clone().requires_grad_(True)
        return fast

    def step(self, params: Params, fast: Params, h: Tensor, y: Tensor, mask: Tensor,
             inner_lr: float | Params, create_graph: bool) -> Params:
        """One inner SGD step on every task at once."""
        loss = masked_task_loss(self.predict(params, fast, h), y, mask, self.kind).sum()
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph)
        new = {}
        for (n, w), g in zip(fast.items(), grads):
            lr = inner_lr[n] if isinstance(inner_lr, dict) else inner_lr
            new[n] = w - lr * g
        return new

    def adapt(self, params: Params, h: Tensor, y: Tensor, mask: Tensor, inner_lr: float | Params,
              steps: int, first_order: bool, track: bool = True,
              on_step: Callable[[int, Params], None] | None = None) -> Params:
        """`steps` inner steps from theta on (h, y, mask); returns the fast weights [tasks, ...].

        track=True keeps the graph back to theta (meta-training); second order unless first_order.
        track=False (evaluation) adapts detached copies. on_step(k, fast) sees every step 0..steps."""
        fast = self.init_fast(params, y.shape[0], track)
        if on_step is not None:
            on_step(0, fast)
        with torch.enable_grad():
            for k in range(1, steps + 1):
                fast = self.step(params, fast, h, y, mask, inner_lr, create_graph=track and not first_order)
                if not track:
                    fast = {n: w.detach().requires_grad_(True) for n, w in fast.items()}
                if on_step is not None:
                    on_step(k, fast)
        return fast
