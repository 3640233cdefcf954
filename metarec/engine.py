"""The one functional inner loop: every algorithm and the evaluation adapt task batches through it.

Tasks are batched: each adapted parameter gets a leading task dimension ([tasks, *shape]).
Parameters that the inner loop does not adapt are never copied per task, and when only the head
is adapted the encoder runs once per batch, outside the loop. Two paths, one result (the tests
hold both to the per-task oracle, float64 1e-10):

- hand-batched (MeLU's head or the whole MeLU, the sinusoid MLP; squared error): the forward pass
  and the inner gradient are written out as bmm / baddbmm over [tasks, n, width]; tasks run in
  groups of similar length; the first layer is kept in Gram form (see Engine._hand_adapt). MAML's
  second-order meta-loss, when every MLP layer adapts, has its pass back written out as well
  (_SecondOrderMAML: Hessian-vector products by hand, where autograd would differentiate the
  written-out inner loop node by node).
- vmap (anything else, e.g. Conv4 with cross-entropy): torch.func.vmap over padded tasks, the
  per-task gradients from one autograd call on the sum of the tasks' losses (tasks are
  independent, so d(sum)/d(w_i) is task i's gradient).
"""
from __future__ import annotations

import math
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


class HandMLP:
    """The adapted module written out as batched matmuls, when it is a ReLU MLP with one output
    (MeLU's decision layers, the sinusoid MLP): offset + net(cat(h, prompt)).squeeze(-1).

    Weights are shared ([out, in]) until an inner step gives them a task dimension ([tasks, out, in]),
    so step 0 is one plain GEMM. The inner gradient of the masked squared error is written out too
    (bmm / baddbmm on [tasks, n, width]): an inner step is a dozen kernels with no autograd.grad, and
    second order needs no double backward, since autograd differentiates the written-out gradient
    like any other expression (relu' is a constant mask, as in autograd's own double backward);
    Engine.adapt_predict leaves even that to _SecondOrderMAML where it can."""

    def __init__(self, module: nn.Module):
        self.module = module
        linears = list(module.net)[::2]
        self.layers = [(f"net.{2 * i}.weight", f"net.{2 * i}.bias") for i in range(len(linears))]
        prompt = getattr(module, "prompt", None)
        self.prompt_shape = tuple(prompt.shape) if isinstance(prompt, nn.Parameter) else None
        self.in_dim = linears[0].in_features - (prompt.numel() if self.prompt_shape else 0)
        self.base_dim = {n: p.dim() for n, p in module.named_parameters()}

    @classmethod
    def of(cls, module: nn.Module) -> "HandMLP | None":
        """The hand-batched form of `module`, or None when it is not such an MLP (checked on an input)."""
        if not isinstance(getattr(module, "net", None), nn.Sequential):
            return None
        layers = list(module.net)
        if (len(layers) % 2 == 0
                or any(not isinstance(m, nn.Linear if i % 2 == 0 else nn.ReLU) for i, m in enumerate(layers))
                or any(m.bias is None for m in layers[::2]) or layers[-1].out_features != 1):
            return None
        hand = cls(module)
        known = {n for layer in hand.layers for n in layer} | {"prompt"}
        if not set(dict(module.named_parameters())) <= known or not set(dict(module.named_buffers())) <= {"offset"}:
            return None
        try:
            p = layers[0].weight
            g = torch.Generator(device=p.device).manual_seed(0)  # the global RNG stays untouched
            h = torch.randn(2, 3, hand.in_dim, dtype=p.dtype, device=p.device, generator=g)
            return hand if _reproduces(hand, module, h) else None
        except Exception:  # noqa: BLE001 (any mismatch means: not this shape of module)
            return None

    def batched(self, name: str, w: Tensor) -> bool:
        return w.dim() > self.base_dim[name]

    def first_input(self, w: Params, h: Tensor) -> Tensor:
        """The first layer's input [tasks, n, in]: h with the (shared or per-task) prompt joined."""
        if self.prompt_shape is None:
            return h
        p = w["prompt"].to(h.dtype)
        p = p.reshape(p.shape[0], 1, -1) if self.batched("prompt", p) else p.reshape(1, 1, -1)
        return torch.cat([h, p.expand(h.shape[0], h.shape[1], -1)], dim=-1)

    def offset(self) -> Tensor | float:
        return getattr(self.module, "offset", 0.0)

    def forward(self, w: Params, h: Tensor, z0: Tensor | None = None, a0: Tensor | None = None,
                raw: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Predictions [tasks, n] and each layer's input (for the gradient); w holds every parameter
        of the module, shared or with a leading task dimension. z0, when given, is the first layer's
        output, computed by the caller (the Gram form); a0, the first layer's input if known.
        raw=True: the last layer's output [tasks, n, 1], without the offset."""
        a = self.first_input(w, h) if a0 is None else a0
        acts = [a]
        for k, (wn, bn) in enumerate(self.layers):
            if k == 0 and z0 is not None:
                z = z0
            else:
                z = _linear(a, w[wn], w[bn])
            if k + 1 < len(self.layers):
                a = torch.relu(z)
                acts.append(a)
        if raw:
            return z, acts
        offset = getattr(self.module, "offset", None)
        return (z.squeeze(-1) + offset if offset is not None else z.squeeze(-1)), acts

    def input_fixed(self, names: set[str]) -> bool:
        """Whether the first layer's input stays the same over the inner steps."""
        return "prompt" not in names

    def grads(self, w: Params, acts: list[Tensor], delta: Tensor, names: list[str], z0: bool = False,
              input_grad: bool = False) -> Params:
        """d(sum of task losses)/d(w[n]) per task for n in names, from delta = dL/dpred [tasks, n, 1];
        with z0=True also "z0": dL/d(first layer's output) [tasks, n, out]; with input_grad=True
        also "input": dL/d(the module's input h) [tasks, n, in]."""
        out: Params = {}
        lowest = -1 if "prompt" in names or input_grad else 0 if z0 else min(
            k for k, (wn, bn) in enumerate(self.layers) if wn in names or bn in names)
        for k in range(len(self.layers) - 1, -1, -1):
            wn, bn = self.layers[k]
            if wn in names:
                out[wn] = torch.bmm(delta.transpose(1, 2), acts[k])  # [tasks, out, in]
            if bn in names:
                out[bn] = delta.sum(1)
            if k == 0 and z0:
                out["z0"] = delta
            if k == lowest:
                break
            delta = _times(delta, w[wn])  # [tasks, n, in]
            if k > 0:  # the mask is a constant (relu'' = 0), so detached
                delta = _relu_back(delta, acts[k].detach())
        if "prompt" in names:
            out["prompt"] = delta[..., self.in_dim:].sum(1).reshape(delta.shape[0], *self.prompt_shape)
        if input_grad:
            out["input"] = delta[..., :self.in_dim]
        return out


class HandFieldsMLP:
    """The whole MeLU written out (algo.inner_params=all): per-field embedding tables (shared
    [V, d], or per task [tasks, V, d] once adapted), the mean-pooled multi-hot table, then the
    HandMLP head. A field's inner gradient is an index_add of its slice of dL/dh: no one-hot,
    and tables the inner loop does not adapt (item ids) are never copied per task."""

    def __init__(self, model: nn.Module):
        enc = model.encoder
        self.mlp = HandMLP(model.head)
        self.fields = [(f"encoder.embeddings.{name}.weight", i) for i, name in enumerate(enc.field_names)]
        self.multi = "encoder.multi.weight"
        self.n_fields = len(enc.field_names)
        dims = [enc.embeddings[name].embedding_dim for name in enc.field_names] + [enc.multi.embedding_dim]
        self.cols = [sum(dims[:i]) for i in range(len(dims) + 1)]  # column range of each part of h
        self.layers = [(f"head.{wn}", f"head.{bn}") for wn, bn in self.mlp.layers]
        self.base_dim = {n: p.dim() for n, p in model.named_parameters()}

    @classmethod
    def of(cls, model: nn.Module) -> "HandFieldsMLP | None":
        enc, head = getattr(model, "encoder", None), getattr(model, "head", None)
        if (head is None or HandMLP.of(head) is None or not isinstance(getattr(enc, "multi", None), nn.Embedding)
                or getattr(enc, "factors", None) is not None  # a factor table is not written out here
                or not isinstance(getattr(enc, "embeddings", None), nn.ModuleDict)
                or list(enc.embeddings) != list(getattr(enc, "field_names", []))
                or not all(isinstance(e, nn.Embedding) for e in enc.embeddings.values())):
            return None
        hand = cls(model)
        if set(dict(model.named_parameters())) - {f for f, _ in hand.fields} - {hand.multi} - {
                f"head.{n}" for n, _ in model.head.named_parameters()}:
            return None
        try:
            g = torch.Generator().manual_seed(0)
            cols = [torch.randint(0, e.num_embeddings, (2, 3, 1), generator=g) for e in enc.embeddings.values()]
            x = torch.cat(cols + [torch.randint(0, 2, (2, 3, enc.multi.num_embeddings), generator=g)], -1)
            return hand if _reproduces(hand, model, x.to(enc.multi.weight.device)) else None
        except Exception:  # noqa: BLE001 (any mismatch means: not this shape of model)
            return None

    def batched(self, name: str, w: Tensor) -> bool:
        return w.dim() > self.base_dim[name]

    def input_fixed(self, names: set[str]) -> bool:
        return (not any(n.startswith("encoder.") for n in names)
                and self.mlp.input_fixed({n[5:] for n in names if n.startswith("head.")}))

    @staticmethod
    def _head(w: Params) -> Params:
        return {n[5:]: v for n, v in w.items() if n.startswith("head.")}

    def _pooling(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        flags = x[..., self.n_fields:].to(dtype)  # [tasks, n, multi]
        return flags / flags.sum(-1, keepdim=True).clamp(min=1.0)

    def first_input(self, w: Params, x: Tensor) -> Tensor:
        parts = []
        for name, i in self.fields:
            table = w[name]
            if self.batched(name, table):  # [tasks, V, d]: row t * V + index of task t's table
                offset = torch.arange(x.shape[0], device=x.device).unsqueeze(1) * table.shape[1]
                parts.append(F.embedding(x[..., i] + offset, table.flatten(0, 1)))
            else:
                parts.append(F.embedding(x[..., i], table))
        multi = w[self.multi]
        pool = self._pooling(x, multi.dtype)
        parts.append(torch.bmm(pool, multi) if multi.dim() == 3 else pool @ multi)
        return self.mlp.first_input(self._head(w), torch.cat(parts, -1))

    def forward(self, w: Params, x: Tensor, z0: Tensor | None = None, a0: Tensor | None = None, raw: bool = False):
        a0 = self.first_input(w, x) if a0 is None else a0
        pred, acts = self.mlp.forward(self._head(w), None, z0=z0, a0=a0, raw=raw)
        return pred, (acts, x)

    def offset(self) -> Tensor | float:
        return self.mlp.offset()

    def grads(self, w: Params, cache, delta: Tensor, names: list[str], z0: bool = False) -> Params:
        acts, x = cache
        enc = [n for n in names if n.startswith("encoder.")]
        head = self.mlp.grads(self._head(w), acts, delta, [n[5:] for n in names if n.startswith("head.")], z0,
                              input_grad=bool(enc))
        out = {("z0" if n == "z0" else "input" if n == "input" else f"head.{n}"): g for n, g in head.items()}
        n_tasks = x.shape[0]
        for name, i in self.fields:
            if name in enc:
                table = w[name]
                rows = table.shape[-2]
                delta = out["input"][..., self.cols[i]:self.cols[i + 1]]
                index = (x[..., i] + torch.arange(n_tasks, device=x.device).unsqueeze(1) * rows).flatten()
                flat = delta.new_zeros(n_tasks * rows, delta.shape[-1]).index_add(0, index, delta.flatten(0, 1))
                out[name] = flat.view(n_tasks, rows, -1)
        if self.multi in enc:
            delta = out["input"][..., self.cols[-2]:self.cols[-1]]
            out[self.multi] = torch.bmm(self._pooling(x, delta.dtype).transpose(1, 2), delta)
        return out


def _reproduces(hand: "HandMLP | HandFieldsMLP", module: nn.Module, x: Tensor) -> bool:
    """Whether the written-out form gives the module's own output on x ([tasks, n, ...], the module run
    task by task): otherwise the engine uses vmap."""
    with torch.no_grad():
        want = torch.stack([module(x[i]) for i in range(x.shape[0])])
        got = hand.forward(dict(module.named_parameters()), x)[0]
    return got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def _linear(a: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """a [tasks, n, in] through weights shared ([out, in], [out]) or per task ([tasks, out, in], [tasks, out])."""
    if W.dim() == 2:
        return F.linear(a, W, b) if b.dim() == 1 else F.linear(a, W) + b.unsqueeze(1)
    return torch.baddbmm(b.unsqueeze(1) if b.dim() == 2 else b, a, W.transpose(1, 2))


def _lr_of(inner_lr: float | Params, name: str) -> float | Tensor:
    """The inner rate of one adapted weight: one for all, or Meta-SGD's per weight."""
    return inner_lr[name] if isinstance(inner_lr, dict) else inner_lr


def _sgd(w: Tensor, g: Tensor, lr: float | Tensor) -> Tensor:
    return torch.add(w, g, alpha=-lr) if isinstance(lr, (int, float)) else w - lr * g


def _times(delta: Tensor, W: Tensor) -> Tensor:
    """delta [tasks, n, out] @ W (shared [out, in] or per task [tasks, out, in]): [tasks, n, in]."""
    if delta.shape[-1] == 1:  # one output: an outer product, no matmul
        return delta * W
    return delta @ W


def _add_times_(out: Tensor, delta: Tensor, W: Tensor, alpha: float) -> Tensor:
    """out += alpha delta @ W for W per task ([tasks, out, in])."""
    if delta.shape[-1] == 1:
        return out.addcmul_(delta, W, value=alpha)
    return out.baddbmm_(delta, W, alpha=alpha)


_threshold_backward = torch.ops.aten.threshold_backward.default  # the overload: less dispatch than the packet


def _relu_back(grad: Tensor, act: Tensor) -> Tensor:
    """relu' applied as autograd applies it: grad where the relu's output act is > 0, else 0."""
    return _threshold_backward(grad, act, 0)


def _add_linear_(out: Tensor, a: Tensor, W: Tensor) -> Tensor:
    """out += a W^T, for W shared ([out, in]) or per task ([tasks, out, in])."""
    if W.dim() == 2:
        return out.add_(F.linear(a, W))
    return out.baddbmm_(a, W.transpose(1, 2))


class _SecondOrderMAML(torch.autograd.Function):
    """One length group's second-order MAML on a HandMLP whose every layer adapts: `steps` inner SGD
    steps on the support set, the first layer in Gram form (see Engine._hand_adapt), then the query
    forward at the adapted weights; the pass back through all of it is written out (a few dozen kernels
    per step, where autograd through the written-out inner gradient runs hundreds of nodes).

    apply(lrs, steps, target, scale, a0, aq0, W1, b1, ..., WL, bL) -> the query outputs [tasks, nq, 1]
    (without the offset), for support inputs a0 [tasks, n, in] and query inputs aq0 [tasks, nq, in]
    (fixed over the steps), target and scale as in Engine._hand_grads, the shared theta, and lrs one
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
                z = _linear(acts[-1], W, b)
            deltas = [torch.addcmul(target, z, scale)]  # dL/d(output), [tasks, n, 1]
            for l in range(n_layers - 1, 0, -1):
                deltas.insert(0, _relu_back(_times(deltas[0], Ws[l]), acts[l]))
            saved.append((acts[1:], deltas, Ws[1:], D))
            for l in range(1, n_layers):
                Ws[l] = _sgd(Ws[l], torch.bmm(deltas[l].transpose(1, 2), acts[l]), lr_w[l])
                bs[l] = _sgd(bs[l], deltas[l].sum(1), lr_b[l])
            D = deltas[0] if D is None else D + deltas[0]
            if k + 1 < steps:
                z1 = z1.baddbmm_(G, deltas[0], alpha=-1.0)  # z1 is not kept (its relu is)
        Gq = torch.bmm(aq0, a0.transpose(1, 2)).mul_(lr_w[0]).add_(lr_b[0])  # [tasks, nq, n]
        z = F.linear(aq0, theta[0], theta[1]).baddbmm_(Gq, D, alpha=-1.0)  # aq0 W1_K^T + b1_K
        acts_q = []
        for W, b in zip(Ws[1:], bs[1:]):
            acts_q.append(torch.relu(z))
            z = _linear(acts_q[-1], W, b)
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
            dq = _relu_back(_times(dq, Ws_q[l - 1]), acts_q[l - 1])
        # the first layer's tangent but for its Gram part: a0 V1^T + c1 for (V1, c1) = lr (dq^T aq0, sum of dq)
        P = torch.bmm(ctx.Gq.transpose(1, 2), dq)
        R = X = None  # R: the sum of rho_1 over the steps after this one; X: the sum of rho_1 D^T over them
        for acts, deltas, Ws, D in reversed(ctx.saved):  # D: the sum of delta_1 before this step
            # tangents along v = lr w_bar: z_dot [tasks, n, out], a_dot = relu' z_dot
            z_dot = P if R is None else torch.baddbmm(P, ctx.G, R, alpha=-1.0)
            a_dots = []
            for l in range(1, n_layers):
                a_dots.append(_relu_back(z_dot, acts[l - 1]))
                z_dot = torch.baddbmm(bbar[l].unsqueeze(1), acts[l - 1], Wbar[l].transpose(1, 2),
                                      beta=lr_b[l], alpha=lr_w[l])
                z_dot = _add_linear_(z_dot, a_dots[-1], Ws[l - 1])
            rho = z_dot * scale  # R{delta} at the output
            for l in range(n_layers - 1, 0, -1):  # Wbar, bbar: fresh tensors, updated in place
                a, a_dot, delta = acts[l - 1], a_dots[l - 1], deltas[l]
                back = _add_times_(_times(rho, Ws[l - 1]), delta, Wbar[l], lr_w[l])  # rho W + delta V
                Wbar[l].baddbmm_(rho.transpose(1, 2), a, alpha=-1.0).baddbmm_(delta.transpose(1, 2), a_dot, alpha=-1.0)
                bbar[l].sub_(rho.sum(1))
                rho = _relu_back(back, a)
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


class Engine:
    """Adapts a model's `inner_names` parameters per task; `kind` picks the loss.

    hand=None uses the hand-batched MLP path where the adapted part is such an MLP and the loss is
    a squared error, vmap elsewhere; hand=False forces vmap (the tests compare both to the oracle).
    task_loop=None: off the hand path, a convolutional model on a CPU runs its forward pass one task
    at a time (vmap makes the per-task convolutions one grouped convolution, which the CPU kernels
    run about 2x slower: Conv4 on Omniglot, 3.8 against 6.2 tasks/s); the inner gradients still come
    from one autograd call. True / False force the loop / vmap.

    compile=True (trainer.compile) compiles the inner loop that autograd runs through: first order,
    evaluation, and second order where _SecondOrderMAML does not apply (it runs eagerly, and faster)."""

    def __init__(self, model: nn.Module, inner_names: list[str], kind: str, compile: bool = False,
                 hand: bool | None = None, task_loop: bool | None = None):
        self.model, self.kind = model, kind
        self.inner_names = list(inner_names)
        # Only the head adapts: run the encoder once per batch and vmap the head alone.
        self.head_only = all(n.startswith("head.") for n in self.inner_names)
        self.module = model.head if self.head_only else model
        self.prefix = "head." if self.head_only else ""
        self.hand = None
        if hand is not False and kind != "classification":
            self.hand = HandMLP.of(self.module) if self.head_only else HandFieldsMLP.of(self.module)
        if hand and self.hand is None:
            raise ValueError("the hand-batched path needs a ReLU MLP head with one output and a squared error")
        if task_loop is None:
            on_cpu = all(p.device.type == "cpu" for p in model.parameters())
            task_loop = on_cpu and any(isinstance(m, nn.modules.conv._ConvNd) for m in self.module.modules())
        self.task_loop = task_loop
        self._vmapped = self._looped if task_loop else vmap(self._forward_one, in_dims=(0, None, 0))
        self._group_steps = self._group_steps_eager
        self._first_names = {self.prefix + n for n in self.hand.layers[0]} if self.hand is not None else set()
        self.group_cost = 200  # what one more length group costs, in padded rows (measured: ~3 ms / ~15 us)
        self.gram = True  # first layer in Gram form where it is cheaper; False keeps W1 explicit (tests)
        # second order in Gram form: the pass back through the inner steps written out, not autograd's (tests: False)
        self.written_backward = True
        if compile:
            self._vmapped = torch.compile(self._vmapped, dynamic=True)
            self._group_steps = torch.compile(self._group_steps_eager, dynamic=True)

    def _forward_one(self, fast: Params, shared: Params, h: Tensor) -> Tensor:
        return functional_call(self.module, {**shared, **fast}, (h,), strict=False)

    def _looped(self, fast: Params, shared: Params, h: Tensor) -> Tensor:
        """What the vmapped forward computes, one task at a time: [tasks, ...]."""
        return torch.stack([self._forward_one({n: w[i] for n, w in fast.items()}, shared, h[i])
                            for i in range(h.shape[0])])

    def features(self, params: Params, x: Tensor) -> Tensor:
        """What the adapted part of the model reads: encoder output (head-only) or raw inputs."""
        if not self.head_only:
            return x
        enc = {k[len("encoder."):]: v for k, v in params.items() if k.startswith("encoder.")}
        return functional_call(self.model.encoder, enc, (x,))

    def _hand_weights(self, shared: Params, fast: Params) -> Params:
        """The hand model's weights by its own names: the shared ones, with fast's (engine names) over them."""
        p = len(self.prefix)
        return {**shared, **{k[p:]: v for k, v in fast.items()}}

    def predict(self, params: Params, fast: Params, h: Tensor) -> Tensor:
        """Predictions for every task with its own fast weights: [tasks, n, ...]. Buffers and
        parameters missing from both dicts come from the module itself."""
        p = len(self.prefix)
        shared = {k[p:]: v for k, v in params.items() if k.startswith(self.prefix) and k not in fast}
        if self.hand is not None:
            # a task dimension of stride 0 (init_fast's views) is one shared weight: one GEMM, no bmm
            fast = {k: _shared_view(v) for k, v in fast.items()}
            return self.hand.forward(self._hand_weights(shared, fast), h)[0]
        return self._vmapped({k[p:]: v for k, v in fast.items()}, shared, h)

    def init_fast(self, params: Params, n_tasks: int, track: bool) -> Params:
        """Per-task views of theta (no copy); with track=False a detached copy that needs grad."""
        fast = {}
        for n in self.inner_names:
            w = params[n] if track else params[n].detach()
            w = w.unsqueeze(0).expand(n_tasks, *w.shape)
            fast[n] = w if track and w.requires_grad else w.clone().requires_grad_(True)
        return fast

    def _hand_grads(self, w: Params, h: Tensor, a0: Tensor | None, target: Tensor, scale: Tensor,
                          names: list[str], z0: Tensor | None) -> Params:
        """Per-task inner gradients of the hand-batched MLP (module-relative names; "z0" too when the
        first layer's output z0 is given). With scale = 2 * mask / n_task and target = (offset - y)
        * scale ([tasks, n, 1]), (out + offset - y) * scale is d/dpred of masked_task_loss(...).sum():
        each task's mean over its own examples."""
        out, cache = self.hand.forward(w, h, z0=z0, a0=a0, raw=True)
        return self.hand.grads(w, cache, torch.addcmul(target, out, scale), names, z0=z0 is not None)

    def _loss_terms(self, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(target, scale) of _hand_grads for targets y and mask [tasks, n]."""
        scale = (2.0 * mask / mask.sum(1, keepdim=True).clamp(min=1.0)).unsqueeze(-1)
        return (self.hand.offset() - y.unsqueeze(-1)) * scale, scale

    def inner_grads(self, params: Params, fast: Params, h: Tensor, y: Tensor, mask: Tensor,
                    create_graph: bool) -> Params:
        """Each task's gradient of its own mean loss at its fast weights: name -> [tasks, ...]. On the
        hand path a fast weight with a task dimension of stride 0 (init_fast's views) counts as shared."""
        if self.hand is not None:
            p = len(self.prefix)
            shared = {k[p:]: v for k, v in params.items() if k.startswith(self.prefix) and k not in fast}
            fast = {n: _shared_view(w) for n, w in fast.items()}
            # first order: the gradient is a constant
            with torch.enable_grad() if create_graph else torch.no_grad():
                w = self._hand_weights(shared, fast)
                grads = self._hand_grads(w, h, None, *self._loss_terms(y, mask), [n[p:] for n in fast], None)
            return {n: grads[n[p:]] for n in fast}
        loss = masked_task_loss(self.predict(params, fast, h), y, mask, self.kind).sum()
        return dict(zip(fast, torch.autograd.grad(loss, list(fast.values()), create_graph=create_graph)))

    def step(self, params: Params, fast: Params, h: Tensor, y: Tensor, mask: Tensor,
             inner_lr: float | Params, create_graph: bool) -> Params:
        """One inner SGD step on every task at once."""
        grads = self.inner_grads(params, fast, h, y, mask, create_graph)
        if self.hand is not None:  # the update keeps fast's own graph to theta (first order too)
            return {n: _sgd(_shared_view(w), grads[n], _lr_of(inner_lr, n))
                    for n, w in fast.items()}
        return {n: w - _lr_of(inner_lr, n) * grads[n] for n, w in fast.items()}

    def adapt(self, params: Params, h: Tensor, y: Tensor, mask: Tensor, inner_lr: float | Params,
              steps: int, first_order: bool, track: bool = True,
              on_step: Callable[[int, Params], None] | None = None, x: Tensor | None = None,
              adam: tuple[float, float] | None = None) -> Params:
        """`steps` inner steps from theta on (h, y, mask); returns the fast weights [tasks, ...].

        track=True keeps the graph back to theta (meta-training); second order unless first_order.
        track=False (evaluation) adapts detached copies. on_step(k, fast) sees every step 0..steps.
        h=None with x (the raw inputs): the engine computes h = features(params, x) itself, on the
        hand path per length group (no features of padding, no gather of them).
        adam=(beta1, beta2): Adam steps of lr inner_lr instead of SGD (track=False only)."""
        if adam is not None:
            if track:
                raise ValueError("the inner Adam adapts detached copies only (track=False): no meta-graph through it")
            return self._adam_adapt(params, h, y, mask, inner_lr, steps, adam, on_step, x)
        if self.hand is not None:
            return self._hand_adapt(params, h, y, mask, inner_lr, steps, first_order, track, on_step, x)
        if h is None:
            h = self.features(params, x)
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

    def adapt_predict(self, params: Params, h: Tensor | None, y: Tensor, mask: Tensor, inner_lr: float | Params,
                      steps: int, first_order: bool, h_query: Tensor, x: Tensor | None = None) -> Tensor:
        """predict(params, adapt(params, h, y, mask, inner_lr, steps, first_order, x=x), h_query): the query
        predictions [tasks, nq] that the meta-loss scores, with the graph back to theta. On the hand path
        in second order they may come from _SecondOrderMAML, which never forms the per-task weights."""
        if self.hand is not None:
            return self._hand_adapt(params, h, y, mask, inner_lr, steps, first_order, True, None, x, query=h_query)
        return self.predict(params, self.adapt(params, h, y, mask, inner_lr, steps, first_order, x=x), h_query)

    def _adam_adapt(self, params: Params, h: Tensor | None, y: Tensor, mask: Tensor, inner_lr: float | Params,
                    steps: int, betas: tuple[float, float], on_step: Callable[[int, Params], None] | None,
                    x: Tensor | None, eps: float = 1e-8) -> Params:
        """adapt() with Adam: torch.optim.Adam's update, its moments fresh for each task (m, v [tasks, ...]),
        on top of inner_grads (hand or vmap path); no graph to theta."""
        if h is None:
            h = self.features(params, x)
        h = h.detach()
        beta1, beta2 = betas
        fast = self.init_fast(params, y.shape[0], track=False)
        m = {n: torch.zeros_like(w) for n, w in fast.items()}  # [tasks, ...]
        v = {n: torch.zeros_like(w) for n, w in fast.items()}
        if on_step is not None:
            on_step(0, fast)
        for k in range(1, steps + 1):
            with torch.enable_grad():
                grads = self.inner_grads(params, fast, h, y, mask, create_graph=False)
            with torch.no_grad():
                new = {}
                for n, w in fast.items():
                    lr, g = _lr_of(inner_lr, n), grads[n]
                    m[n].lerp_(g, 1 - beta1)
                    v[n].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    denom = (v[n].sqrt() / math.sqrt(1 - beta2 ** k)).add_(eps)
                    new[n] = w.detach() - lr / (1 - beta1 ** k) * m[n] / denom
            fast = {n: w.requires_grad_(True) for n, w in new.items()}
            if on_step is not None:
                on_step(k, fast)
        return fast

    def _hand_adapt(self, params, h, y, mask, inner_lr, steps, first_order, track, on_step, x=None,
                    query=None) -> Params | Tensor:
        """adapt() on the hand-batched path; with query (its h [tasks, nq, ...]) adapt_predict().

        - Tasks run in groups of similar length, each padded to its own longest task: padding costs
          FLOPs in every matmul of every step.
        - Fast weights stay shared until the first step gives them a task dimension.
        - The first layer is kept in Gram form: its inner gradients are delta_j^T a0 (weight) and
          delta_j summed over rows (bias) for the fixed input a0 (support features), so each step moves
          its output by z0 -= (lr a0 a0^T + lr_b 1 1^T) delta_j, an [n, n] matmul instead of W1's
          [n, in] (MeLU: n <= 100 ratings against 192 inputs); W1 - lr (sum_j delta_j)^T a0 and
          b1 - lr_b sum_j delta_j are formed once, at the end (the same weights).
        - Second order with every layer adapted and the first in Gram form in every group: each group's
          steps and query forward are one _SecondOrderMAML, whose pass back is written out.
        What the caller sees is [tasks, ...] in the batch's order."""
        n_tasks, p = y.shape[0], len(self.prefix)
        create_graph = track and not first_order
        grad_mode = torch.enable_grad if create_graph else torch.no_grad  # first order: constant gradients
        update_mode = torch.enable_grad if track else torch.no_grad  # ...but fast keeps its graph to theta
        lrs = {n: _lr_of(inner_lr, n) for n in self.inner_names}
        theta = {n: params[n] if track else params[n].detach() for n in self.inner_names}
        shared = {k[p:]: v for k, v in params.items() if k.startswith(self.prefix) and k not in theta}
        w1, b1 = (self.prefix + n for n in self.hand.layers[0])
        lr1, lr_b = lrs.get(w1), lrs.get(b1, 0.0)
        scalar = lambda lr: isinstance(lr, (int, float))  # noqa: E731
        fixed_input = self.hand.input_fixed({n[p:] for n in theta})
        gram_ok = self.gram and w1 in theta and fixed_input and scalar(lr1) and scalar(lr_b)
        first = {w1, b1} & set(theta)  # what the Gram form adapts
        layer_names = [self.prefix + n for layer in self.hand.layers for n in layer]
        written = (self.written_backward and query is not None and create_graph and gram_ok and steps > 0
                   and isinstance(self.hand, HandMLP) and set(layer_names) == set(theta)
                   and all(scalar(lrs[n]) for n in layer_names))  # and every group in Gram form, below
        encode = h is None  # features per group, from the raw inputs
        source = x if encode else h
        if steps > 0 and bool((mask[:, 1:] > mask[:, :-1]).any()):
            # real examples first (merged support + query has holes), so that groups can be narrow
            pos = (mask == 0).to(torch.int8).argsort(dim=1, stable=True)  # [tasks, L]
            source = source.gather(1, pos.view(*pos.shape, *[1] * (source.dim() - 2)).expand_as(source))
            y, mask = y.gather(1, pos), mask.gather(1, pos)
        groups = self.length_groups(mask) if steps > 0 else [(None, mask.shape[1])]
        order = torch.cat([index for index, _ in groups]) if len(groups) > 1 else None
        if order is not None and bool((order.diff() < 0).any()):  # callers that sort their tasks skip this gather
            source, y, mask = source.index_select(0, order), y.index_select(0, order), mask.index_select(0, order)
            query = None if query is None else query.index_select(0, order)
        else:
            order = None
        sizes = [n_tasks if index is None else len(index) for index, _ in groups]
        written = written and all(width < theta[w1].shape[-1] for _, width in groups)
        theta_weights = self._hand_weights(shared, theta)  # for the first layer's input a0 (and aq0)
        states = []
        # groups are slices of the sorted tasks (a split's backward is one cat, not a scatter)
        for hg, yg, mg, (_, width) in zip(source.split(sizes), y.split(sizes), mask.split(sizes), groups):
            hg, yg, mg = hg[:, :width], yg[:, :width], mg[:, :width]
            with grad_mode():
                if encode:
                    hg = self.features(params, hg)
                a0 = None if not fixed_input else self.hand.first_input(theta_weights, hg)
                if a0 is not None and not create_graph:
                    a0 = a0.detach()  # may be hg itself, which no_grad does not detach
                gram = gram_ok and steps > 0 and width < a0.shape[-1]
                target, scale = self._loss_terms(yg, mg)
                s = {"h": hg, "target": target, "scale": scale, "a0": a0, "gram": gram, "fast": dict(theta), "D": None}
                if gram and not written:
                    s["G"] = torch.bmm(a0, a0.transpose(1, 2)).mul_(lr1).add_(lr_b if b1 in theta else 0.0)
                    s["z0"] = F.linear(a0, theta[w1], theta[b1] if b1 in theta else shared[b1[p:]])
            states.append(s)

        def first_layer(s: dict, n: str) -> Tensor:  # W1 - lr (sum_j delta_j)^T a0, b1 - lr_b sum_j delta_j
            if not s["gram"] or s["D"] is None:
                return s["fast"][n]
            with update_mode():
                if n == b1:
                    return torch.add(theta[b1], s["D"].sum(1), alpha=-lr_b)
                return torch.baddbmm(theta[w1], s["D"].transpose(1, 2), s["a0"], alpha=-lr1)

        def merged() -> Params:
            out = {}
            for n in self.inner_names:
                parts = [first_layer(s, n) if n in first else s["fast"][n] for s in states]
                if not self.hand.batched(n[p:], parts[0]):
                    out[n] = parts[0].expand(n_tasks, *parts[0].shape)
                else:
                    out[n] = parts[0] if len(groups) == 1 else torch.cat(parts)
                    out[n] = out[n] if inverse is None else out[n].index_select(0, inverse)
            return out

        inverse = None if order is None else order.argsort()
        loop = dict(shared=shared, lrs=lrs, create_graph=create_graph, track=track)
        if written:
            preds = []
            for s, hq in zip(states, query.split(sizes)):
                aq0 = self.hand.first_input(theta_weights, hq)
                out = _SecondOrderMAML.apply(tuple(lrs[n] for n in layer_names), steps, s["target"], s["scale"],
                                             s["a0"], aq0, *(theta[n] for n in layer_names))
                preds.append(out.squeeze(-1))
            pred = (preds[0] if len(preds) == 1 else torch.cat(preds)) + self.hand.offset()
            return pred if inverse is None else pred.index_select(0, inverse)
        if on_step is None:  # each group's whole inner loop in one call (one graph under trainer.compile)
            for s in states:
                s["fast"], s["z0"], s["D"] = self._group_steps(
                    fast=s["fast"], h=s["h"], a0=s["a0"], target=s["target"], scale=s["scale"], G=s.get("G"),
                    z0=s.get("z0"), D=None, steps=steps, gram=s["gram"], final=True, **loop)
            fast = merged()
            return fast if query is None else self.predict(params, fast, query)
        on_step(0, merged())
        for k in range(1, steps + 1):
            for s in states:
                s["fast"], s["z0"], s["D"] = self._group_steps_eager(
                    fast=s["fast"], h=s["h"], a0=s["a0"], target=s["target"], scale=s["scale"], G=s.get("G"),
                    z0=s.get("z0"), D=s["D"], steps=1, gram=s["gram"], final=k == steps, **loop)
            on_step(k, merged())
        return merged()

    def _group_steps_eager(self, shared: Params, fast: Params, h: Tensor, a0: Tensor | None, target: Tensor,
                           scale: Tensor, G: Tensor | None, z0: Tensor | None, D: Tensor | None,
                           lrs: dict, steps: int, gram: bool, create_graph: bool, track: bool, final: bool):
        """`steps` inner steps of one length group: (fast, z0, D) after them. In the Gram form z0 is
        the first layer's output and D the sum of its output gradients so far (see _hand_adapt)."""
        p = len(self.prefix)
        names = [n for n in fast if not (gram and n in self._first_names)]
        rel = [n[p:] for n in names]
        for k in range(steps):
            # first order: constant gradients, while fast keeps its graph to theta
            with torch.enable_grad() if create_graph else torch.no_grad():
                w = self._hand_weights(shared, fast)
                grads = self._hand_grads(w, h, a0, target, scale, rel, z0 if gram else None)
                if gram:
                    delta = grads["z0"]
                    D = delta if D is None else D + delta
                    if k + 1 < steps or not final:
                        z0 = torch.baddbmm(z0, G, delta, alpha=-1.0)
            with torch.enable_grad() if track else torch.no_grad():
                fast = {**fast, **{n: _sgd(fast[n], grads[r], lrs[n]) for n, r in zip(names, rel)}}
        return fast, z0, D

    def length_groups(self, mask: Tensor) -> list[tuple[Tensor | None, int]]:
        """(task index, padded width) per group: tasks sorted by length and cut where the padded rows
        plus a fixed cost per group (the kernels it launches, in rows) are least (exact: dynamic
        programming over the places where the sorted length changes)."""
        # a task's extent: one past its last real example (merged support + query has holes)
        lengths = ((mask != 0) * torch.arange(1, mask.shape[1] + 1, device=mask.device)).amax(1)
        order = lengths.argsort(stable=True)
        sorted_len = lengths[order].long().clamp(min=1).tolist()
        n = len(sorted_len)
        ends = [j for j in range(1, n) if sorted_len[j] != sorted_len[j - 1]] + [n]  # where a group may end
        best, cut = {0: 0.0}, {}
        for j in ends:
            cut[j] = min(best, key=lambda i: best[i] + (j - i) * sorted_len[j - 1])
            best[j] = best[cut[j]] + (j - cut[j]) * sorted_len[j - 1] + self.group_cost
        bounds, j = [], n
        while j > 0:
            bounds.append((cut[j], j))
            j = cut[j]
        if len(bounds) == 1:
            return [(None, sorted_len[-1])]
        return [(order[a:b], sorted_len[b - 1]) for a, b in reversed(bounds)]


def _shared_view(w: Tensor) -> Tensor:
    """A task dimension of stride 0 (an expanded view of theta) is one shared weight: drop it."""
    return w[0] if w.dim() and w.stride(0) == 0 else w
