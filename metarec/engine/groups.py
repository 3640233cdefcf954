"""The fast path: a declared MLP form (hand.py) adapted per length group, its first layer in Gram form.

- Tasks run in groups of similar length, each padded to its own longest task: padding costs FLOPs
  in every matmul of every step (length_groups).
- Fast weights stay shared until the first step gives them a task dimension.
- The first layer is kept in Gram form: its inner gradients are delta_j^T a0 (weight) and delta_j
  summed over rows (bias) for the fixed input a0 (support features), so each step moves its output
  by z0 -= (lr a0 a0^T + lr_b 1 1^T) delta_j, an [n, n] matmul instead of W1's [n, in] (MeLU: n <= 100
  ratings against 192 inputs); W1 - lr (sum_j delta_j)^T a0 and b1 - lr_b sum_j delta_j are formed
  once, at the end (the same weights).
- Second order with every layer adapted and the first in Gram form in every group: each group's
  steps and query forward are one SecondOrderMAML, whose pass back is written out.
What the caller sees is [tasks, ...] in the batch's order, as on the core path."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarec.engine.hand import HandFieldsMLP, HandMLP, shared_view
from metarec.engine.inner import InnerLoop, Params, scalar, sgd
from metarec.engine.task_rows import TaskRows
from metarec.engine.second_order import SecondOrderMAML


@dataclass(frozen=True)
class Run:
    """What every group of one adapt call shares."""
    theta: Params  # the adapted weights' start (engine names); detached when not tracked
    shared: Params  # the hand form's other weights (its own names)
    lrs: dict  # engine name -> inner rate (a number, or Meta-SGD's tensor)
    create_graph: bool  # second order: the inner gradients keep their graph
    track: bool  # the fast weights keep their graph to theta (first order too)
    gram: bool  # the first layer may run in Gram form (each group also checks its width)
    fixed_input: bool  # the first layer's input stays the same over the steps (no adapted prompt)

    def grad_mode(self):  # first order: constant gradients...
        return torch.enable_grad() if self.create_graph else torch.no_grad()

    def update_mode(self):  # ...while the fast weights keep their graph to theta
        return torch.enable_grad() if self.track else torch.no_grad()


@dataclass
class Group:
    """One length group's inner-loop state; its tasks padded to the group's longest."""
    h: Tensor  # the hand form's input [tasks, width, ...]
    target: Tensor  # (offset - y) * scale [tasks, width, 1]
    scale: Tensor  # 2 mask / (the task's length) [tasks, width, 1]
    a0: Tensor | None  # the first layer's input, when it stays fixed over the steps
    gram: bool  # the first layer in Gram form
    fast: Params  # the adapted weights (engine names); in Gram form W1 and b1 stay theta's
    G: Tensor | None = None  # lr a0 a0^T + lr_b: what moves z0 from one step to the next [tasks, width, width]
    z0: Tensor | None = None  # the first layer's output
    D: Tensor | None = None  # the sum of the first layer's output gradients so far
    q: Tensor | None = None  # the group's queries (re-indexed into its tasks' rows where those are kept)
    rows: dict[str, TaskRows] | None = None  # field tables kept as each task's own rows (task_rows.py); h re-indexed
    stepped: bool = False  # an inner step has run (until then every fast weight is theta's)


class HandPath:
    """The engine's fast path for a model that declares a form (forms.py), with a squared-error loss."""

    def __init__(self, model: nn.Module, inner_names: list[str], kind: str, features: Callable,
                 compile: bool = False):
        if kind == "classification":
            raise ValueError("the fast path writes out a squared error: cross-entropy runs the core path")
        self.head_only = all(n.startswith("head.") for n in inner_names)
        form = model.fast_form(whole=not self.head_only)
        if form is None:
            raise ValueError(f"model {type(model).__name__} declares no fast form for these parameters")
        self.hand = HandMLP(model.head, form) if self.head_only else HandFieldsMLP(model, form)
        self.inner_names, self.features = list(inner_names), features
        self.prefix = "head." if self.head_only else ""
        self.w1, self.b1 = (self.prefix + n for n in self.hand.layers[0])
        self.layer_names = [self.prefix + n for layer in self.hand.layers for n in layer]
        self.group_cost = 200  # what one more length group costs, in padded rows (measured: ~3 ms / ~15 us)
        self._group_steps = torch.compile(self._steps, dynamic=True) if compile else self._steps

    @classmethod
    def of(cls, model: nn.Module, inner_names: list[str], kind: str, features: Callable,
           compile: bool = False) -> "HandPath | None":
        """The fast path where the model declares a form for what adapts (Model.fast_form, metarec/models/base.py;
        None: the core path) and the loss is a squared error."""
        whole = not all(n.startswith("head.") for n in inner_names)
        if kind == "classification" or model.fast_form(whole=whole) is None:
            return None
        return cls(model, inner_names, kind, features, compile)

    # ---- forward and inner gradient ----------------------------------------------------------------

    def _shared(self, params: Params, fast: Params) -> Params:
        p = len(self.prefix)
        return {k[p:]: v for k, v in params.items() if k.startswith(self.prefix) and k not in fast}

    def _weights(self, shared: Params, fast: Params) -> Params:
        """The hand form's weights by its own names: the shared ones, with fast's (engine names) over them."""
        p = len(self.prefix)
        return {**shared, **{k[p:]: v for k, v in fast.items()}}

    def predict(self, params: Params, fast: Params, h: Tensor) -> Tensor:
        # a task dimension of stride 0 (init_fast's views) is one shared weight: one GEMM, no bmm
        fast = {k: shared_view(v) for k, v in fast.items()}
        return self.hand.forward(self._weights(self._shared(params, fast), fast), h)[0]

    def loss_terms(self, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(target, scale) [tasks, n, 1]: with scale = 2 mask / n_task and target = (offset - y) scale,
        (out + offset - y) scale is d/dpred of masked_task_loss(...).sum(), each task's mean over its own examples."""
        scale = (2.0 * mask / mask.sum(1, keepdim=True).clamp(min=1.0)).unsqueeze(-1)
        return (self.hand.offset() - y.unsqueeze(-1)) * scale, scale

    def _grads(self, w: Params, h: Tensor, a0: Tensor | None, target: Tensor, scale: Tensor,
               names: list[str], z0: Tensor | None) -> Params:
        """Per-task inner gradients (the hand form's names; "z0" too when the first layer's output is given)."""
        out, cache = self.hand.forward(w, h, z0=z0, a0=a0, raw=True)
        return self.hand.grads(w, cache, torch.addcmul(target, out, scale), names, z0=z0 is not None)

    def inner_grads(self, params: Params, fast: Params, h: Tensor, y: Tensor, mask: Tensor,
                    create_graph: bool) -> Params:
        """Engine.inner_grads on the fast path; a fast weight of task stride 0 counts as shared."""
        p = len(self.prefix)
        shared = self._shared(params, fast)
        fast = {n: shared_view(w) for n, w in fast.items()}
        with torch.enable_grad() if create_graph else torch.no_grad():  # first order: a constant
            grads = self._grads(self._weights(shared, fast), h, None, *self.loss_terms(y, mask), [n[p:] for n in fast], None)
        return {n: grads[n[p:]] for n in fast}

    # ---- the grouped inner loop ---------------------------------------------------------------------

    def _run(self, params: Params, loop: InnerLoop) -> Run:
        theta = {n: params[n] if loop.track else params[n].detach() for n in self.inner_names}
        lrs = {n: loop.lr_of(n) for n in self.inner_names}
        fixed_input = self.hand.input_fixed({n[len(self.prefix):] for n in theta})
        gram = (self.w1 in theta and fixed_input and scalar(lrs[self.w1])
                and scalar(lrs.get(self.b1, 0.0)))
        return Run(theta, self._shared(params, theta), lrs, loop.create_graph, loop.track, gram, fixed_input)

    def adapt(self, params: Params, h: Tensor | None, y: Tensor, mask: Tensor, loop: InnerLoop,
              on_step: Callable[[int, Params], None] | None = None, x: Tensor | None = None,
              query: Tensor | None = None) -> Params | Tensor:
        """Engine.adapt on the fast path; with query (its h [tasks, nq, ...]) Engine.adapt_predict.
        h=None: each group's features from its raw inputs x (no features of padding)."""
        run, steps = self._run(params, loop), loop.steps
        states, inverse, written = self._begin(run, params, h, y, mask, x, query, steps)
        if written:
            return self._written(run, states, steps, inverse)
        merge = lambda: self._merge(run, states, inverse, y.shape[0])  # noqa: E731
        if on_step is None:  # each group's whole inner loop in one call (one graph under trainer.compile)
            for s in states:
                s.fast, s.z0, s.D = self._group_steps(s, run, steps, True)
                s.stepped = steps > 0
            return merge() if query is None else self._predict(run, states, inverse)
        on_step(0, merge())
        for k in range(1, steps + 1):
            for s in states:
                s.fast, s.z0, s.D = self._steps(s, run, 1, k == steps)
                s.stepped = True
            on_step(k, merge())
        return merge()

    def trace(self, params: Params, h: Tensor, y: Tensor, mask: Tensor, loop: InnerLoop, query: Tensor,
              at: list[int] | None = None) -> list[Tensor]:
        """Engine.adapt_trace on the fast path: each group predicts its own tasks' queries with its own
        fast weights after each step `at` lists (None: every step 0..steps); no per-task weights are merged."""
        run, steps = self._run(params, loop), loop.steps
        states, inverse, _ = self._begin(run, params, h, y, mask, None, query, steps, written_ok=False)
        preds = [self._predict(run, states, inverse)] if at is None or 0 in at else []
        for k in range(1, steps + 1):
            for s in states:
                s.fast, s.z0, s.D = self._steps(s, run, 1, k == steps)
                s.stepped = True
            if at is None or k in at:
                preds.append(self._predict(run, states, inverse))
        return preds

    def _begin(self, run: Run, params: Params, h: Tensor | None, y: Tensor, mask: Tensor, x: Tensor | None,
               query: Tensor | None, steps: int, written_ok: bool = True) -> tuple[list[Group], Tensor | None, bool]:
        """The length groups' states before the first step, the permutation back to the batch's order, and
        whether the written second order runs them."""
        source, y, mask, query, groups, inverse = self._arrange(x if h is None else h, y, mask, query, steps)
        widths, sizes = [w for _, w in groups], [len(i) if i is not None else y.shape[0] for i, _ in groups]
        written = written_ok and self._written_applies(run, query, steps, widths)
        theta_weights = self._weights(run.shared, run.theta)  # for the first layer's input a0 (and aq0)
        queries = query.split(sizes) if query is not None else [None] * len(sizes)
        states = [self._start(run, params, theta_weights, hg[:, :w], yg[:, :w], mg[:, :w], qg, h is None, steps, written)
                  for hg, yg, mg, qg, w in zip(source.split(sizes), y.split(sizes), mask.split(sizes), queries, widths)]
        return states, inverse, written

    def _predict(self, run: Run, states: list[Group], inverse: Tensor | None) -> Tensor:
        """Every group's query predictions with its own fast weights [tasks, nq], in the batch's order."""
        preds = []
        for s in states:
            fast = {n: self._first_layer(run, s, n) if n in (self.w1, self.b1) else s.fast[n] for n in self.inner_names}
            preds.append(self.hand.forward(self._weights(run.shared, fast), s.q)[0])
        pred = preds[0] if len(preds) == 1 else torch.cat(preds)
        return pred if inverse is None else pred.index_select(0, inverse)

    def _arrange(self, source: Tensor, y: Tensor, mask: Tensor, query: Tensor | None, steps: int):
        """The tasks cut into length groups: (source, y, mask, query) in group order, the groups
        [(task index or None, padded width)], and the permutation back to the batch's order (or None)."""
        if steps > 0 and bool((mask[:, 1:] > mask[:, :-1]).any()):
            # real examples first (merged support + query has holes), so that groups can be narrow
            pos = (mask == 0).to(torch.int8).argsort(dim=1, stable=True)  # [tasks, L]
            source = source.gather(1, pos.view(*pos.shape, *[1] * (source.dim() - 2)).expand_as(source))
            y, mask = y.gather(1, pos), mask.gather(1, pos)
        groups = length_groups(mask, self.group_cost) if steps > 0 else [(None, mask.shape[1])]
        order = torch.cat([index for index, _ in groups]) if len(groups) > 1 else None
        if order is None or not bool((order.diff() < 0).any()):  # callers that sort their tasks skip this gather
            return source, y, mask, query, groups, None
        source, y, mask = source.index_select(0, order), y.index_select(0, order), mask.index_select(0, order)
        query = None if query is None else query.index_select(0, order)
        return source, y, mask, query, groups, order.argsort()

    def _written_applies(self, run: Run, query: Tensor | None, steps: int, widths: list[int]) -> bool:
        """Second order, every MLP layer adapted at a plain rate, the first in Gram form in every group."""
        return (query is not None and run.create_graph and run.gram and steps > 0
                and isinstance(self.hand, HandMLP) and set(self.layer_names) == set(run.theta)
                and all(scalar(run.lrs[n]) for n in self.layer_names)
                and all(width < run.theta[self.w1].shape[-1] for width in widths))

    def _start(self, run: Run, params: Params, theta_weights: Params, hg: Tensor, yg: Tensor, mg: Tensor,
               qg: Tensor | None, encode: bool, steps: int, written: bool) -> Group:
        """A group's state before its first step (encode: hg holds raw inputs, whose features it computes;
        qg: its tasks' queries, which a field table's rows include)."""
        with run.grad_mode():
            if encode:
                hg = self.features(params, hg)
            a0 = self.hand.first_input(theta_weights, hg) if run.fixed_input else None
            if a0 is not None and not run.create_graph:
                a0 = a0.detach()  # may be hg itself, which no_grad does not detach
            gram = run.gram and steps > 0 and hg.shape[1] < a0.shape[-1]
            s = Group(hg, *self.loss_terms(yg, mg), a0, gram, dict(run.theta), q=qg)
            if gram and not written:
                b1 = run.theta[self.b1] if self.b1 in run.theta else run.shared[self.b1[len(self.prefix):]]
                s.G = torch.bmm(a0, a0.transpose(1, 2)).mul_(run.lrs[self.w1]).add_(run.lrs.get(self.b1, 0.0))
                s.z0 = F.linear(a0, run.theta[self.w1], b1)
            if isinstance(self.hand, HandFieldsMLP) and steps > 0:
                both = hg if qg is None else torch.cat([hg, qg], 1)  # a query's rows stay theta's: read them too
                both, s.rows = self.hand.task_rows(run.theta, both, run.lrs)
                s.h, s.q = (both, None) if qg is None else both.split([hg.shape[1], qg.shape[1]], 1)
        if s.rows:
            with run.update_mode():  # the fast weights keep their graph to theta (first order too)
                s.fast.update({n: rows.gather(run.theta[n]) for n, rows in s.rows.items()})
        return s

    def _steps(self, s: Group, run: Run, steps: int, final: bool):
        """`steps` inner steps of one group: (fast, z0, D) after them (in Gram form z0 moves by G, and the
        first layer's weights wait for D; not on the last step of all, final, where z0 is not read again)."""
        p, fast, z0, D = len(self.prefix), s.fast, s.z0, s.D
        names = [n for n in fast if not (s.gram and n in (self.w1, self.b1))]
        rel = [n[p:] for n in names]
        for k in range(steps):
            with run.grad_mode():
                grads = self._grads(self._weights(run.shared, fast), s.h, s.a0, s.target, s.scale, rel,
                                    z0 if s.gram else None)
                if s.gram:
                    delta = grads["z0"]
                    D = delta if D is None else D + delta
                    if k + 1 < steps or not final:
                        z0 = torch.baddbmm(z0, s.G, delta, alpha=-1.0)
            with run.update_mode():
                fast = {**fast, **{n: sgd(fast[n], grads[r], run.lrs[n]) for n, r in zip(names, rel)}}
        return fast, z0, D

    def _first_layer(self, run: Run, s: Group, n: str) -> Tensor:
        """W1 - lr (sum_j delta_j)^T a0 and b1 - lr_b sum_j delta_j of a group in Gram form."""
        if not s.gram or s.D is None:
            return s.fast[n]
        with run.update_mode():
            if n == self.b1:
                return torch.add(run.theta[self.b1], s.D.sum(1), alpha=-run.lrs[self.b1])
            return torch.baddbmm(run.theta[self.w1], s.D.transpose(1, 2), s.a0, alpha=-run.lrs[self.w1])

    def _table(self, run: Run, s: Group, n: str) -> Tensor:
        """A group's fast weight n, a field table kept as the tasks' own rows written into theta's whole table."""
        if not s.rows or n not in s.rows:
            return s.fast[n]
        return s.rows[n].expand(run.theta[n], s.fast[n]) if s.stepped else run.theta[n]

    def _merge(self, run: Run, states: list[Group], inverse: Tensor | None, n_tasks: int) -> Params:
        """The groups' fast weights as one [tasks, ...] per name, in the batch's order."""
        out, p = {}, len(self.prefix)
        for n in self.inner_names:
            parts = [self._first_layer(run, s, n) if n in (self.w1, self.b1) else self._table(run, s, n) for s in states]
            if not self.hand.batched(n[p:], parts[0]):
                out[n] = parts[0].expand(n_tasks, *parts[0].shape)
            else:
                out[n] = parts[0] if len(states) == 1 else torch.cat(parts)
                out[n] = out[n] if inverse is None else out[n].index_select(0, inverse)
        return out

    def _written(self, run: Run, states: list[Group], steps: int, inverse: Tensor | None) -> Tensor:
        """The query predictions [tasks, nq] of every group's SecondOrderMAML."""
        lrs, theta = tuple(run.lrs[n] for n in self.layer_names), [run.theta[n] for n in self.layer_names]
        theta_weights = self._weights(run.shared, run.theta)
        preds = []
        for s in states:
            aq0 = self.hand.first_input(theta_weights, s.q)
            preds.append(SecondOrderMAML.apply(lrs, steps, s.target, s.scale, s.a0, aq0, *theta).squeeze(-1))
        pred = (preds[0] if len(preds) == 1 else torch.cat(preds)) + self.hand.offset()
        return pred if inverse is None else pred.index_select(0, inverse)


def length_groups(mask: Tensor, group_cost: float) -> list[tuple[Tensor | None, int]]:
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
        best[j] = best[cut[j]] + (j - cut[j]) * sorted_len[j - 1] + group_cost
    bounds, j = [], n
    while j > 0:
        bounds.append((cut[j], j))
        j = cut[j]
    if len(bounds) == 1:
        return [(None, sorted_len[-1])]
    return [(order[a:b], sorted_len[b - 1]) for a, b in reversed(bounds)]
