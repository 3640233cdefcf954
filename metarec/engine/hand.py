"""The fast path's forward and inner gradient: a model's declared MLP (forms.py) written out as batched
matmuls over [tasks, n, width], for the masked squared error.

Weights are shared ([out, in]) until an inner step gives them a task dimension ([tasks, out, in]), so
step 0 is one plain GEMM. The inner gradient is written out too (bmm / baddbmm): an inner step is a
dozen kernels with no autograd.grad, and second order needs no double backward, since autograd
differentiates the written-out gradient like any other expression (relu' is a constant mask, as in
autograd's own double backward); second_order.py writes even that pass back out where it can."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarec.engine.forms import FieldsForm, MLPForm
from metarec.engine.inner import Params, scalar
from metarec.engine.task_rows import TaskRows, worth_it


class HandMLP:
    """offset + net(cat(h, prompt)).squeeze(-1) of a module that declares an MLPForm (MeLU's decision
    layers, the sinusoid MLP); weights by the module's own names."""

    def __init__(self, module: nn.Module, form: MLPForm):
        self.module, self.form = module, form
        self.layers = list(form.layers)
        self.prompt = form.prompt
        self.prompt_shape = tuple(module.get_parameter(form.prompt).shape) if form.prompt else None
        self.in_dim = form.in_dim
        self.base_dim = {n: p.dim() for n, p in module.named_parameters()}

    def batched(self, name: str, w: Tensor) -> bool:
        return w.dim() > self.base_dim[name]

    def first_input(self, w: Params, h: Tensor) -> Tensor:
        """The first layer's input [tasks, n, in]: h with the (shared or per-task) prompt joined."""
        if self.prompt is None:
            return h
        p = w[self.prompt].to(h.dtype)
        p = p.reshape(p.shape[0], 1, -1) if self.batched(self.prompt, p) else p.reshape(1, 1, -1)
        return torch.cat([h, p.expand(h.shape[0], h.shape[1], -1)], dim=-1)

    def offset(self) -> Tensor | float:
        return 0.0 if self.form.offset is None else self.module.get_buffer(self.form.offset)

    def forward(self, w: Params, h: Tensor, z0: Tensor | None = None, a0: Tensor | None = None,
                raw: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Predictions [tasks, n] and each layer's input (for the gradient); w holds every parameter
        of the module, shared or with a leading task dimension. z0, when given, is the first layer's
        output, computed by the caller (the Gram form); a0, the first layer's input if known.
        raw=True: the last layer's output [tasks, n, 1], without the offset."""
        a = self.first_input(w, h) if a0 is None else a0
        acts = [a]
        for k, (wn, bn) in enumerate(self.layers):
            z = z0 if k == 0 and z0 is not None else linear(a, w[wn], w[bn])
            if k + 1 < len(self.layers):
                a = torch.relu(z)
                acts.append(a)
        if raw:
            return z, acts
        out = z.squeeze(-1)
        return (out if self.form.offset is None else out + self.offset()), acts

    def input_fixed(self, names: set[str]) -> bool:
        """Whether the first layer's input stays the same over the inner steps."""
        return self.prompt not in names

    def grads(self, w: Params, acts: list[Tensor], delta: Tensor, names: list[str], z0: bool = False,
              input_grad: bool = False) -> Params:
        """d(sum of task losses)/d(w[n]) per task for n in names, from delta = dL/dpred [tasks, n, 1];
        with z0=True also "z0": dL/d(first layer's output) [tasks, n, out]; with input_grad=True
        also "input": dL/d(the module's input h) [tasks, n, in]."""
        out: Params = {}
        lowest = -1 if self.prompt in names or input_grad else 0 if z0 else min(
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
            delta = times(delta, w[wn])  # [tasks, n, in]
            if k > 0:  # the mask is a constant (relu'' = 0), so detached
                delta = relu_back(delta, acts[k].detach())
        if self.prompt in names:
            out[self.prompt] = delta[..., self.in_dim:].sum(1).reshape(delta.shape[0], *self.prompt_shape)
        if input_grad:
            out["input"] = delta[..., :self.in_dim]
        return out


class HandFieldsMLP:
    """The whole model written out (algo.inner_params=all) from its FieldsForm: per-field embedding
    tables (shared [V, d], per task [tasks, V, d], or per task as the rows it touches: task_rows.py),
    the mean-pooled multi-hot table, the fixed factor rows, then the HandMLP head. A field's inner gradient
    is its slice of dL/dh summed into its rows (_field_grad); tables the inner loop does not adapt (item
    ids) are never copied per task."""

    def __init__(self, model: nn.Module, form: FieldsForm):
        self.model = model
        self.mlp = HandMLP(model.head, form.head)
        self.fields = [(name, i) for i, name in enumerate(form.fields)]
        self.multi = form.multi  # None: no multi-hot block (data=atomic without *_seq features)
        self.factors = form.factors  # a buffer of fixed rows, read at x's last column (data.item_factors)
        self.n_fields = len(form.fields)
        self.multi_rows = model.get_parameter(form.multi).shape[0] if form.multi else 0
        dims = [model.get_parameter(name).shape[1] for name in (*form.fields, *([form.multi] if form.multi else []))]
        self.cols = [sum(dims[:i]) for i in range(len(dims) + 1)]  # column range of each part of h
        self.layers = [(f"head.{wn}", f"head.{bn}") for wn, bn in self.mlp.layers]
        self.base_dim = {n: p.dim() for n, p in model.named_parameters()}
        self._memo: tuple[Tensor, dict] | None = None  # the last x and its fields' one-hots (_one_hot_t)

    def batched(self, name: str, w: Tensor) -> bool:
        return w.dim() > self.base_dim[name]

    def _one_hot_t(self, x: Tensor, i: int, rows: int, dtype: torch.dtype) -> Tensor:
        """Field i's one-hot of x, transposed: [tasks, rows, n]. An inner loop reads the same x at every
        step, so the last x's are kept (by identity: x is never written in place)."""
        if self._memo is None or self._memo[0] is not x:
            self._memo = (x, {})
        cached = self._memo[1]
        if (i, dtype) not in cached:
            cached[(i, dtype)] = F.one_hot(x[..., i], rows).to(dtype).transpose(1, 2)
        return cached[(i, dtype)]

    def input_fixed(self, names: set[str]) -> bool:
        return (not any(n.startswith("encoder.") for n in names)
                and self.mlp.input_fixed({n[5:] for n in names if n.startswith("head.")}))

    @staticmethod
    def _head(w: Params) -> Params:
        return {n[5:]: v for n, v in w.items() if n.startswith("head.")}

    def _pooling(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        flags = x[..., self.n_fields:self.n_fields + self.multi_rows].to(dtype)  # [tasks, n, multi]
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
        if self.multi is not None:
            multi = w[self.multi]
            pool = self._pooling(x, multi.dtype)
            parts.append(torch.bmm(pool, multi) if multi.dim() == 3 else pool @ multi)
        if self.factors is not None:
            parts.append(self.model.get_buffer(self.factors)[x[..., -1]].to(parts[0].dtype))
        return self.mlp.first_input(self._head(w), torch.cat(parts, -1))

    def task_rows(self, theta: Params, x: Tensor, lrs: dict) -> tuple[Tensor, dict[str, TaskRows]]:
        """For each adapted field table larger than the support width (at a plain-number rate), the rows
        each task touches (task_rows.py): x with those fields' columns re-indexed into them, and the rows."""
        out, local = {}, None
        for name, i in self.fields:
            if name in theta and scalar(lrs[name]) and worth_it(x[..., i], theta[name].shape[0]):
                out[name] = rows = TaskRows.of(x[..., i])
                local = x.clone() if local is None else local
                local[..., i] = rows.local
        return (x if local is None else local), out

    def forward(self, w: Params, x: Tensor, z0: Tensor | None = None, a0: Tensor | None = None, raw: bool = False):
        a0 = self.first_input(w, x) if a0 is None else a0
        pred, acts = self.mlp.forward(self._head(w), None, z0=z0, a0=a0, raw=raw)
        return pred, (acts, x)

    def offset(self) -> Tensor | float:
        return self.mlp.offset()

    def _field_grad(self, x: Tensor, i: int, rows: int, delta: Tensor) -> Tensor:
        """dL/d(field i's table) per task [tasks, rows, d]: one-hot^T delta as a bmm where the table is no
        wider than the support (a task's own rows, task_rows.py; MovieLens' small tables), where index_add's
        per-row loop costs more than the matmul's wasted zeros; an index_add into zeros for a larger one."""
        if rows <= x.shape[1]:
            return torch.bmm(self._one_hot_t(x, i, rows, delta.dtype), delta)
        tasks = x.shape[0]
        flat = (x[..., i] + torch.arange(tasks, device=x.device).unsqueeze(1) * rows).flatten()
        return delta.new_zeros(tasks * rows, delta.shape[-1]).index_add(0, flat, delta.flatten(0, 1)).view(tasks, rows, -1)

    def grads(self, w: Params, cache, delta: Tensor, names: list[str], z0: bool = False) -> Params:
        acts, x = cache
        enc = [n for n in names if n.startswith("encoder.")]
        head = self.mlp.grads(self._head(w), acts, delta, [n[5:] for n in names if n.startswith("head.")], z0,
                              input_grad=bool(enc))
        out = {("z0" if n == "z0" else "input" if n == "input" else f"head.{n}"): g for n, g in head.items()}
        for name, i in self.fields:
            if name in enc:
                delta = out["input"][..., self.cols[i]:self.cols[i + 1]]
                out[name] = self._field_grad(x, i, w[name].shape[-2], delta)
        if self.multi is not None and self.multi in enc:
            delta = out["input"][..., self.cols[-2]:self.cols[-1]]
            out[self.multi] = torch.bmm(self._pooling(x, delta.dtype).transpose(1, 2), delta)
        return out


def linear(a: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """a [tasks, n, in] through weights shared ([out, in], [out]) or per task ([tasks, out, in], [tasks, out])."""
    if W.dim() == 2:
        return F.linear(a, W, b) if b.dim() == 1 else F.linear(a, W) + b.unsqueeze(1)
    return torch.baddbmm(b.unsqueeze(1) if b.dim() == 2 else b, a, W.transpose(1, 2))


def times(delta: Tensor, W: Tensor) -> Tensor:
    """delta [tasks, n, out] @ W (shared [out, in] or per task [tasks, out, in]): [tasks, n, in]."""
    if delta.shape[-1] == 1:  # one output: an outer product, no matmul
        return delta * W
    return delta @ W


_threshold_backward = torch.ops.aten.threshold_backward.default  # the overload: less dispatch than the packet


def relu_back(grad: Tensor, act: Tensor) -> Tensor:
    """relu' applied as autograd applies it: grad where the relu's output act is > 0, else 0."""
    return _threshold_backward(grad, act, 0)


def shared_view(w: Tensor) -> Tensor:
    """A task dimension of stride 0 (an expanded view of theta) is one shared weight: drop it."""
    return w[0] if w.dim() and w.stride(0) == 0 else w
