"""The one inner loop every algorithm and the evaluation adapt task batches through, after functorch's
MAML example: the model is a function of its weights (functional_call), one vmap runs every task of
the padded batch with its own fast weights, SGD steps on each task's masked mean loss. The per-task
gradients come from one autograd call on the sum of the tasks' losses (tasks are independent, so
d(sum)/d(w_i) is task i's gradient): torch.func.grad inside vmap gets BatchNorm's second-order
term wrong (Conv4, test_conv4_task_loop_and_vmap_equal_the_oracle), autograd does not.

Each adapted parameter gets a leading task dimension ([tasks, *shape]); parameters the inner loop does
not adapt are never copied per task, and when only the head adapts the encoder runs once per batch,
outside the loop. A model that declares its fast form (forms.py) runs the fast path instead
(groups.py); trainer.fast_paths=false keeps every model on this one (the tests hold both to the
per-task oracle, metarec/bench/reference.py, float64 1e-10)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from metarec.engine.adam import adam_adapt
from metarec.engine.groups import HandPath
from metarec.engine.inner import InnerLoop, Params


def masked_task_loss(pred: Tensor, y: Tensor, mask: Tensor, kind: str) -> Tensor:
    """Per-task mean loss over the real examples: [tasks]. Each task divides by its own mask sum,
    so padding never shrinks the effective inner learning rate."""
    if kind == "classification":  # pred [tasks, n, classes]
        per_example = F.cross_entropy(pred.flatten(0, 1), y.flatten(), reduction="none").view_as(mask)
    else:  # pred [tasks, n]
        per_example = (pred - y) ** 2
    return (per_example * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class Engine:
    """Adapts a model's `inner_names` parameters per task; `kind` picks the loss.

    fast_paths=False runs the core path alone (trainer.fast_paths). compile=True (trainer.compile)
    compiles the forward that autograd runs through (on the fast path, the inner steps; second order
    there runs SecondOrderMAML eagerly instead, which is faster)."""

    def __init__(self, model: nn.Module, inner_names: list[str], kind: str, compile: bool = False,
                 fast_paths: bool = True):
        self.model, self.kind = model, kind
        self.inner_names = list(inner_names)
        # Only the head adapts: run the encoder once per batch and vmap the head alone.
        self.head_only = all(n.startswith("head.") for n in self.inner_names)
        self.module = model.head if self.head_only else model
        self.prefix = "head." if self.head_only else ""
        self.fast = HandPath.of(model, self.inner_names, kind, self.features, compile) if fast_paths else None
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        self.use_task_loop(on_cpu and any(isinstance(m, nn.modules.conv._ConvNd) for m in self.module.modules()), compile)

    def use_task_loop(self, loop: bool, compile: bool = False) -> None:
        """The core path's forward one task at a time (loop) or vmapped over the tasks. A convolutional
        model on a CPU loops: vmap makes the per-task convolutions one grouped convolution, which the CPU
        kernels run about 2x slower (Conv4 on Omniglot, 3.8 against 6.2 tasks/s)."""
        self.task_loop = loop
        self._forward = self._looped if loop else vmap(self._forward_one, in_dims=(0, None, 0))
        if compile:
            self._forward = torch.compile(self._forward, dynamic=True)

    def _forward_one(self, fast: Params, shared: Params, h: Tensor) -> Tensor:
        return functional_call(self.module, {**shared, **fast}, (h,), strict=False)

    def _looped(self, fast: Params, shared: Params, h: Tensor) -> Tensor:
        """What the vmapped forward computes, one task at a time: [tasks, ...]."""
        return torch.stack([self._forward_one({n: w[i] for n, w in fast.items()}, shared, h[i])
                            for i in range(h.shape[0])])

    def _split(self, params: Params, fast: Params) -> tuple[Params, Params]:
        """(fast, shared) by the adapted module's own names; shared: its parameters that fast leaves out."""
        p = len(self.prefix)
        shared = {k[p:]: v for k, v in params.items() if k.startswith(self.prefix) and k not in fast}
        return {k[p:]: v for k, v in fast.items()}, shared

    def features(self, params: Params, x: Tensor) -> Tensor:
        """What the adapted part of the model reads: encoder output (head-only) or raw inputs."""
        if not self.head_only:
            return x
        enc = {k[len("encoder."):]: v for k, v in params.items() if k.startswith("encoder.")}
        return functional_call(self.model.encoder, enc, (x,))

    def predict(self, params: Params, fast: Params, h: Tensor) -> Tensor:
        """Predictions for every task with its own fast weights: [tasks, n, ...]. Buffers and
        parameters missing from both dicts come from the module itself."""
        if self.fast is not None:
            return self.fast.predict(params, fast, h)
        return self._forward(*self._split(params, fast), h)

    def init_fast(self, params: Params, n_tasks: int, track: bool) -> Params:
        """Per-task views of theta (no copy); with track=False a detached copy that needs grad."""
        fast = {}
        for n in self.inner_names:
            w = params[n] if track else params[n].detach()
            w = w.unsqueeze(0).expand(n_tasks, *w.shape)
            fast[n] = w if track and w.requires_grad else w.clone().requires_grad_(True)
        return fast

    def inner_grads(self, params: Params, fast: Params, h: Tensor, y: Tensor, mask: Tensor,
                    create_graph: bool) -> Params:
        """Each task's gradient of its own mean loss at its fast weights: name -> [tasks, ...];
        create_graph=False: constants (first order)."""
        if self.fast is not None:
            return self.fast.inner_grads(params, fast, h, y, mask, create_graph)
        with torch.enable_grad():
            loss = masked_task_loss(self.predict(params, fast, h), y, mask, self.kind).sum()
            return dict(zip(fast, torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph)))

    def adapt(self, params: Params, h: Tensor | None, y: Tensor, mask: Tensor, loop: InnerLoop,
              on_step: Callable[[int, Params], None] | None = None, x: Tensor | None = None) -> Params:
        """loop.steps inner steps from theta on (h, y, mask); returns the fast weights [tasks, ...].
        on_step(k, fast) sees every step 0..steps. h=None: the engine computes h = features(params, x)
        itself (on the fast path per length group: no features of padding)."""
        if loop.adam is not None:
            return adam_adapt(self, params, h, y, mask, loop, on_step, x)
        if self.fast is not None:
            return self.fast.adapt(params, h, y, mask, loop, on_step, x)
        h = self.features(params, x) if h is None else h
        fast = self.init_fast(params, y.shape[0], loop.track)
        if on_step is not None:
            on_step(0, fast)
        for k in range(1, loop.steps + 1):
            grads = self.inner_grads(params, fast, h, y, mask, loop.create_graph)
            with torch.enable_grad():
                fast = {n: w - loop.lr_of(n) * grads[n] for n, w in fast.items()}
            if not loop.track:
                fast = {n: w.detach().requires_grad_(True) for n, w in fast.items()}
            if on_step is not None:
                on_step(k, fast)
        return fast

    def adapt_trace(self, params: Params, h: Tensor | None, y: Tensor, mask: Tensor, loop: InnerLoop,
                    h_query: Tensor, at: list[int] | None = None) -> list[Tensor]:
        """The query predictions [tasks, nq] after each of the steps 0..loop.steps that `at` lists (None:
        all), no graph kept (loop.track=False): what evaluation scores. The fast path predicts each length
        group with its own weights, never forming a whole embedding table per task (task_rows.py)."""
        if self.fast is not None and loop.adam is None:
            with torch.no_grad():
                return self.fast.trace(params, h, y, mask, loop, h_query, at)
        preds: list[Tensor] = []

        def record(k: int, fast: Params) -> None:
            if at is None or k in at:
                with torch.no_grad():
                    preds.append(self.predict(params, {n: w.detach() for n, w in fast.items()}, h_query))

        self.adapt(params, h, y, mask, loop, on_step=record)
        return preds

    def adapt_predict(self, params: Params, h: Tensor | None, y: Tensor, mask: Tensor, loop: InnerLoop,
                      h_query: Tensor, x: Tensor | None = None) -> Tensor:
        """predict(params, adapt(params, h, y, mask, loop, x=x), h_query): the query predictions
        [tasks, nq] that the meta-loss scores, with the graph back to theta. On the fast path in
        second order they may come from SecondOrderMAML, which never forms the per-task weights."""
        if self.fast is not None:
            return self.fast.adapt(params, h, y, mask, loop, None, x, query=h_query)
        return self.predict(params, self.adapt(params, h, y, mask, loop, x=x), h_query)
