"""The reference: classic per-task MAML with plain autograd, one task at a time, no padding.

The gradient oracle of the tests and the baseline of `metarec bench`; never used in training."""
from __future__ import annotations

import torch
from torch.func import functional_call

from metarec.engine import masked_task_loss


def per_task_meta_loss(model, inner_names, batch, kind, inner_lr, steps, first_order):
    """mean_i L_Q(theta'_i), computed task by task on the unpadded examples."""
    params = dict(model.named_parameters())
    losses = []
    for i in range(batch.n_tasks):
        s = batch.support_mask[i].bool()
        q = batch.query_mask[i].bool()
        xs, ys, xq, yq = batch.support_x[i][s], batch.support_y[i][s], batch.query_x[i][q], batch.query_y[i][q]
        fast = {n: params[n] for n in inner_names}
        for _ in range(steps):
            pred = functional_call(model, {**params, **fast}, (xs,))
            loss = masked_task_loss(pred[None], ys[None], torch.ones_like(ys, dtype=pred.dtype)[None], kind)[0]
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {n: w - (inner_lr[n] if isinstance(inner_lr, dict) else inner_lr) * g
                    for (n, w), g in zip(fast.items(), grads)}
        pred = functional_call(model, {**params, **fast}, (xq,))
        losses.append(masked_task_loss(pred[None], yq[None], torch.ones_like(yq, dtype=pred.dtype)[None], kind)[0])
    return torch.stack(losses).mean()
