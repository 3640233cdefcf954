"""Reptile's inner Adam (algo.inner_optimizer=adam): torch.optim.Adam's update with fresh moments per
task, on top of the engine's inner gradients (core or fast path); no graph to theta."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from metarec.engine.inner import InnerLoop, Params


def adam_adapt(engine, params: Params, h: Tensor | None, y: Tensor, mask: Tensor, loop: InnerLoop,
               on_step: Callable[[int, Params], None] | None = None, x: Tensor | None = None,
               eps: float = 1e-8) -> Params:
    """Engine.adapt with Adam steps of rate loop.lr and betas loop.adam (m, v [tasks, ...])."""
    if loop.track:
        raise ValueError("the inner Adam adapts detached copies only (track=False): no meta-graph through it")
    h = (engine.features(params, x) if h is None else h).detach()
    beta1, beta2 = loop.adam
    fast = engine.init_fast(params, y.shape[0], track=False)
    m = {n: torch.zeros_like(w) for n, w in fast.items()}  # [tasks, ...]
    v = {n: torch.zeros_like(w) for n, w in fast.items()}
    if on_step is not None:
        on_step(0, fast)
    for k in range(1, loop.steps + 1):
        grads = engine.inner_grads(params, fast, h, y, mask, create_graph=False)
        with torch.no_grad():
            new = {}
            for n, w in fast.items():
                g = grads[n]
                m[n].lerp_(g, 1 - beta1)
                v[n].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (v[n].sqrt() / math.sqrt(1 - beta2 ** k)).add_(eps)
                new[n] = w.detach() - loop.lr_of(n) / (1 - beta1 ** k) * m[n] / denom
        fast = {n: w.requires_grad_(True) for n, w in new.items()}
        if on_step is not None:
            on_step(k, fast)
    return fast
