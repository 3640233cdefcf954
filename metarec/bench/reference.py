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


def per_task_adapt(model, inner_names, x, y, kind, inner_lr, steps, adam=None, eps=1e-8):
    """One task's adapted weights (detached) after `steps` full-batch steps on its unpadded (x, y):
    plain SGD, or with adam=(beta1, beta2) a torch.optim.Adam fresh for this task on a copy of them."""
    params = dict(model.named_parameters())
    ones = torch.ones_like(y, dtype=params[inner_names[0]].dtype)[None]
    fast = {n: params[n].detach().clone().requires_grad_(True) for n in inner_names}
    opt = None if adam is None else torch.optim.Adam(list(fast.values()), lr=inner_lr, betas=adam, eps=eps)
    for _ in range(steps):
        loss = masked_task_loss(functional_call(model, {**params, **fast}, (x,))[None], y[None], ones, kind)[0]
        grads = torch.autograd.grad(loss, list(fast.values()))
        if opt is None:
            fast = {n: (w - inner_lr * g).detach().requires_grad_(True) for (n, w), g in zip(fast.items(), grads)}
            continue
        for w, g in zip(fast.values(), grads):
            w.grad = g
        opt.step()
    return {n: w.detach() for n, w in fast.items()}


def per_task_reptile_step(model, inner_names, batch, kind, inner_lr, steps, adam=None):
    """Reptile's update task by task: sets .grad = theta - mean_i theta'_i on the adapted weights and the
    mean loss gradient at the adapted weights on the rest (as Reptile.step); returns that mean loss.
    adam=(beta1, beta2): the inner steps are torch.optim.Adam's (algo.inner_optimizer=adam)."""
    params = dict(model.named_parameters())
    data = batch.merged()  # Reptile trains each task on all of its data
    total = {n: torch.zeros_like(params[n]) for n in inner_names}
    losses = []
    for i in range(data.n_tasks):
        m = data.support_mask[i].bool()
        x, y = data.support_x[i][m], data.support_y[i][m]
        ones = torch.ones_like(y, dtype=params[inner_names[0]].dtype)[None]
        fast = per_task_adapt(model, inner_names, x, y, kind, inner_lr, steps, adam)
        losses.append(masked_task_loss(functional_call(model, {**params, **fast}, (x,))[None], y[None], ones, kind)[0])
        for n in inner_names:
            total[n] += fast[n]
    loss = torch.stack(losses).mean()
    if loss.requires_grad:
        loss.backward()
    for n in inner_names:
        params[n].grad = params[n].detach() - total[n] / data.n_tasks
    return loss
