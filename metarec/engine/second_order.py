"""MAML's second-order meta-gradient on the fast path with its pass back written out: Hessian-vector
products by hand, where autograd would differentiate the written-out inner loop node by node. Used
(groups.py) when every MLP layer adapts, the first layer is in Gram form and the loss is second order."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metarec.engine.hand import linear, relu_back, times
from metarec.engine.inner import sgd


def _add_times_(out: Tensor, delta: Tensor, W: Tensor, alpha: float) -> Tensor:
    """out += alpha delta @ W for W per task ([tasks, out, in])."""
    if delta.shape[-1] == 1:
        return out.addcmul_(delta, W, value=alpha)
    return out.baddbmm_(delta, W, alpha=alpha)


def _add_linear_(out: Tensor, a: Tensor, W: Tensor) -> Tensor:
    """out += a W^T, for W shared ([out, in]) or per task ([tasks, out, in])."""
    if W.dim() == 2:
        return out.add_(F.linear(a, W))
    return out.baddbmm_(a, W.transpose(1, 2))


class SecondOrderMAML(torch.autograd.Function):
    """One length group's second-order MAML on a HandMLP whose every layer adapts: `steps` inner SGD
    steps on the support set, the first layer in Gram form (see groups.py), then the query
    forward at the adapted weights; the pass back through all of it is written out (a few dozen kernels
    per step, where autograd through the written-out inner gradient runs hundreds of nodes).

    apply(lrs, steps, target, scale, a0, aq0, W1, b1, ..., WL, bL) -> the query outputs [tasks, nq, 1]
    (without the offset), for support inputs a0 [tasks, n, in] and query inputs aq0 [tasks, nq, in]
    (fixed over the steps), target and scale as in HandPath.loss_terms, the shared theta, and lrs one
    float per weight in theta's order.

    Backward: step k maps w to w - lr g(w, a0), so the gradient at its input is w_bar - H(w) v with
    v = lr w_bar (the Hessian-vector product of the task's support loss), and a0 and theta pick up
    -d<g(w, a0), v>/d(a0). Both come from Pearlmutter's R-pass through the MLP: tangents z_dot, a_dot
    forward along v, then rho = R{delta} back (relu' a constant mask, as autograd has it):
    (H v)_W = rho^T a + delta^T a_dot, (H v)_b = sum of rho, and the a0 part rho_1 W1_k + delta_1 V1_k.
    W1 never appears per task: W1_k = W1 - lr D_k^T a0 (D_k: the sum of delta_1 before step k), the
    query's W1_bar is dq^T aq0 (dq: the query's delta_1) and W1_bar after the steps back to k is
    dq^T aq0 - R^T a0 (R: the sum of rho_1 over them), so every first-layer term is an [n, n] or
    [n, nq] matrix product (G = lr a0 a0^T + lr_b, Gq = lr aq0 a0^T + lr_b) until a0_bar, aq0_bar and
    W1's gradient, formed once at the end."""

    @staticmethod
    def forward(ctx, lrs, steps, target, scale, a0, aq0, *theta):
        n_layers = len(theta) // 2
        Ws, bs = list(theta[0::2]), list(theta[1::2])
        lr_w, lr_b = lrs[0::2], lrs[1::2]
        G = None  # [tasks, n, n], what moves z1 from one step to the next (one step: nothing)
        if steps > 1:
            G = torch.bmm(a0, a0.transpose(1, 2)).mul_(lr_w[0]).add_(lr_b[0])
        z1 = F.linear(a0, Ws[0], bs[0])  # [tasks, n, out]
        D = None  # the sum of the first layer's output gradients so far
        saved = []
        for k in range(steps):
            acts, z = [a0], z1
            for W, b in zip(Ws[1:], bs[1:]):
                acts.append(torch.relu(z))
                z = linear(acts[-1], W, b)
            deltas = [torch.addcmul(target, z, scale)]  # dL/d(output), [tasks, n, 1]
            for l in range(n_layers - 1, 0, -1):
                deltas.insert(0, relu_back(times(deltas[0], Ws[l]), acts[l]))
            saved.append((acts[1:], deltas, Ws[1:], D))
            for l in range(1, n_layers):
                Ws[l] = sgd(Ws[l], torch.bmm(deltas[l].transpose(1, 2), acts[l]), lr_w[l])
                bs[l] = sgd(bs[l], deltas[l].sum(1), lr_b[l])
            D = deltas[0] if D is None else D + deltas[0]
            if k + 1 < steps:
                z1 = z1.baddbmm_(G, deltas[0], alpha=-1.0)  # z1 is not kept (its relu is)
        Gq = torch.bmm(aq0, a0.transpose(1, 2)).mul_(lr_w[0]).add_(lr_b[0])  # [tasks, nq, n]
        z = F.linear(aq0, theta[0], theta[1]).baddbmm_(Gq, D, alpha=-1.0)  # aq0 W1_K^T + b1_K
        acts_q = []
        for W, b in zip(Ws[1:], bs[1:]):
            acts_q.append(torch.relu(z))
            z = linear(acts_q[-1], W, b)
        ctx.lrs, ctx.saved, ctx.G, ctx.Gq, ctx.D, ctx.query = lrs, saved, G, Gq, D, (acts_q, Ws[1:])
        ctx.save_for_backward(scale, a0, aq0, theta[0])
        return z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, out_bar):
        scale, a0, aq0, W1 = ctx.saved_tensors
        lr_w, lr_b = ctx.lrs[0::2], ctx.lrs[1::2]
        acts_q, Ws_q = ctx.query
        n_layers = len(Ws_q) + 1
        # the query forward back: W_bar, b_bar of the adapted weights [tasks, ...], dq = its delta_1
        Wbar, bbar, dq = [None] * n_layers, [None] * n_layers, out_bar
        for l in range(n_layers - 1, 0, -1):
            Wbar[l], bbar[l] = torch.bmm(dq.transpose(1, 2), acts_q[l - 1]), dq.sum(1)
            dq = relu_back(times(dq, Ws_q[l - 1]), acts_q[l - 1])
        # the first layer's tangent but for its Gram part: a0 V1^T + c1 for (V1, c1) = lr (dq^T aq0, sum of dq)
        P = torch.bmm(ctx.Gq.transpose(1, 2), dq)
        R = X = None  # R: the sum of rho_1 over the steps after this one; X: the sum of rho_1 D^T over them
        for acts, deltas, Ws, D in reversed(ctx.saved):  # D: the sum of delta_1 before this step
            # tangents along v = lr w_bar: z_dot [tasks, n, out], a_dot = relu' z_dot
            z_dot = P if R is None else torch.baddbmm(P, ctx.G, R, alpha=-1.0)
            a_dots = []
            for l in range(1, n_layers):
                a_dots.append(relu_back(z_dot, acts[l - 1]))
                z_dot = torch.baddbmm(bbar[l].unsqueeze(1), acts[l - 1], Wbar[l].transpose(1, 2),
                                      beta=lr_b[l], alpha=lr_w[l])
                z_dot = _add_linear_(z_dot, a_dots[-1], Ws[l - 1])
            rho = z_dot * scale  # R{delta} at the output
            for l in range(n_layers - 1, 0, -1):  # Wbar, bbar: fresh tensors, updated in place
                a, a_dot, delta = acts[l - 1], a_dots[l - 1], deltas[l]
                back = _add_times_(times(rho, Ws[l - 1]), delta, Wbar[l], lr_w[l])  # rho W + delta V
                Wbar[l].baddbmm_(rho.transpose(1, 2), a, alpha=-1.0).baddbmm_(delta.transpose(1, 2), a_dot, alpha=-1.0)
                bbar[l].sub_(rho.sum(1))
                rho = relu_back(back, a)
            # a0_bar of this step, -(rho_1 W1_k + delta_1 V1_k), with W1_k = W1 - lr D^T a0 and
            # V1_k = lr (dq^T aq0 - R^T a0): its a0 terms are lr (rho_1 D^T + delta_1 R^T) a0, and summed
            # over the steps the second is the transpose of the first (both: rho_1 of a step times the
            # delta_1 of an earlier one), so C = X + X^T
            if D is not None:
                X = _add_bmm(X, rho, D.transpose(1, 2))
            R = rho if R is None else R.add_(rho)
        # the query's first layer, aq0 (W1 - lr D^T a0)^T + b1 - lr_b 1 1^T D: with E = D dq^T [tasks, n, nq],
        # aq0_bar = dq W1 - lr E^T a0 and a0_bar gets -lr E aq0, besides -R W1 + lr C a0 from the steps
        E = torch.bmm(ctx.D, dq.transpose(1, 2))
        grad_a0 = grad_aq0 = None
        if ctx.needs_input_grad[4]:
            grad_a0 = torch.bmm(E, aq0)
            if X is not None:
                grad_a0.baddbmm_(X + X.transpose(1, 2), a0, alpha=-1.0)
            grad_a0 = (R @ W1).add_(grad_a0, alpha=lr_w[0]).neg_()
        if ctx.needs_input_grad[5]:
            grad_aq0 = (dq @ W1).baddbmm_(E.transpose(1, 2), a0, alpha=-lr_w[0])
        rows = lambda t: t.flatten(0, 1)  # noqa: E731
        grad_theta = [rows(dq).T @ rows(aq0) - rows(R).T @ rows(a0), rows(dq).sum(0) - rows(R).sum(0)]
        for W, b in zip(Wbar[1:], bbar[1:]):
            grad_theta += [W.sum(0), b.sum(0)]
        return (None, None, None, None, grad_a0, grad_aq0, *grad_theta)


def _add_bmm(out: Tensor | None, a: Tensor, b: Tensor) -> Tensor:
    """out + a @ b, batched; out=None: a @ b."""
    return torch.bmm(a, b) if out is None else out.baddbmm_(a, b)
