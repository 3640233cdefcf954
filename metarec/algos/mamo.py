"""MAMO: memory-augmented meta-optimisation (Dong et al., KDD 2020; dongmanqing/Code-for-MAMO), on model=mamo.

For user u with profile p_u (its field embeddings joined; metarec/models/mamo.py):
    a_u   = softmax_k cos(p_u, M_P[k])                       attention over K memory slots
    b_u   = sum_k a_uk M_U[k]                                 personalised bias (feature-specific memory)
    theta_u = phi_u - tau b_u                                  the user tower's personalised start
    M_u,I = sum_k a_uk M_UI[k]                                 the preference matrix's start (task-specific memory)
local update: `inner_steps` SGD steps of rate rho on the support set, of every weight but the field
embeddings (towers, preference matrix, MLP); meta-loss: mean query loss after them, second order (or
first order), Adam over phi (and the embeddings). After each meta-step the memories are written:
    M_P  <- alpha a_u p_u^T      + (1 - alpha) M_P
    M_U  <- beta  a_u (x) g_u    + (1 - beta)  M_U    g_u: the fast gradient, the query loss's at the adapted user tower
    M_UI <- gamma a_u (x) M'_u,I + (1 - gamma) M_UI   M'_u,I: the adapted preference matrix
At evaluation the memories are read, never written (a test user's data never reaches another's start).

Where ours departs from the paper and the authors' code, and why:
- Per meta-batch writes: the meta-batch's users read the same memory at once (vectorised, no loop over
  tasks), and one write per meta-batch uses the batch mean of a_u (x) x_u with the same rate, where the
  paper writes after each user in turn; a sequential write of B users would apply the rate B times.
  algo.convex_write=true writes slot k towards the attention-weighted mean instead (M_k moves by
  rate * mean_u a_uk (x_u - M_k)): the paper's rule shrinks the memories by sum_k a_uk^2 each cycle.
- Our protocol's tasks (MeLU's support / query sizes, not the code's 15 / 5) and MeLU's fields on
  model=mamo (not the code's director / rate fields); ratings by squared error with an offset, as every
  metarec method, not the code's 5-class cross-entropy.
- Full-batch SGD local steps on the support set and a true (second-order by default) meta-gradient
  with Adam; the code runs Adam with clipped mini-batches locally and a summed first-order global step.
- The attention is the paper's softmax of cosines: the code adds a linear layer re-created with random
  weights at every read. The code also writes M_P while testing; we never write at evaluation.
- Memory starts: M_UI's slots start as the model's preference-layer weight (the code: N(0, 1) for a
  64 x 64 matrix); M_U covers the user tower's weight and bias (the code: weights only), N(0, 0.05).
- The field embeddings are global only (MeLU's), trained by the meta-gradient; the code adapts them
  locally and never updates them globally.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metarec.algos.base import AlgoConfig, MetaLearner
from metarec.checks import rule
from metarec.engine import Params, masked_task_loss
from metarec.errors import UserError
from metarec.models.mamo import MAMONet
from metarec.tasks import TaskBatch


@dataclass
class MAMOConfig(AlgoConfig):
    """algo=mamo (conf/algo/mamo.yaml); needs model=mamo. Symbols as in the paper."""

    name: str = "mamo"
    inner_steps: int = rule(3, ">= 0")  # local steps (the code's n_inner_loop)
    inner_lr: float = rule(0.01, "> 0")  # rho, the local SGD rate
    first_order: bool = False  # drop the local gradients' graph
    memory_slots: int = rule(3, ">= 1")  # K (n_k)
    profile_rate: float = rule(0.5, "in [0, 1]")  # alpha: M_P's write rate
    bias_rate: float = rule(0.05, "in [0, 1]")  # beta: M_U's
    pref_rate: float = rule(0.1, "in [0, 1]")  # gamma: M_UI's
    bias_scale: float = rule(0.01, ">= 0")  # tau: theta_u = phi_u - tau b_u
    convex_write: bool = False  # write each slot towards its attention-weighted mean (see the module docstring)


class Memory(nn.Module):
    """M_P [K, user_dim], M_U (user tower name -> [K, *shape]) and M_UI [K, d, d]: buffers, saved with the algorithm."""

    def __init__(self, model: MAMONet, slots: int):
        super().__init__()
        w = model.pref.weight
        self.register_buffer("profile", torch.randn(slots, model.user_dim).to(w))
        self.user_names = ["user.weight", "user.bias"]
        for n in self.user_names:
            p = dict(model.named_parameters())[n]
            self.register_buffer(n.replace(".", "__"), 0.05 * torch.randn(slots, *p.shape).to(p))
        self.register_buffer("pref", w.detach().clone().unsqueeze(0).repeat(slots, 1, 1))

    def bias(self) -> Params:
        return {n: self.get_buffer(n.replace(".", "__")) for n in self.user_names}

    def attention(self, p_u: Tensor) -> Tensor:
        """a [tasks, K] from profiles p_u [tasks, user_dim]."""
        return F.cosine_similarity(p_u.unsqueeze(1), self.profile.unsqueeze(0), dim=-1).softmax(-1)

    def read(self, a: Tensor) -> tuple[Params, Tensor]:
        """Each task's personalised bias b_u (name -> [tasks, ...]) and preference-matrix start [tasks, d, d]."""
        return ({n: torch.einsum("bk,k...->b...", a, m) for n, m in self.bias().items()},
                torch.einsum("bk,kij->bij", a, self.pref))

    @staticmethod
    def written(memory: Tensor, a: Tensor, x: Tensor, rate: float, convex: bool) -> Tensor:
        """memory [K, ...] after one per-meta-batch write of x [tasks, ...] with attention a [tasks, K]."""
        mean = torch.einsum("bk,b...->k...", a, x) / a.shape[0]  # mean_u a_uk x_u
        if not convex:
            return rate * mean + (1 - rate) * memory
        weight = a.mean(0).view(-1, *[1] * (memory.dim() - 1))  # mean_u a_uk
        return memory + rate * (mean - weight * memory)

    @torch.no_grad()
    def write(self, a: Tensor, p_u: Tensor, grads: Params, pref: Tensor, cfg) -> None:
        c = cfg.convex_write
        self.profile.copy_(self.written(self.profile, a, p_u, cfg.profile_rate, c))
        for n, m in self.bias().items():
            m.copy_(self.written(m, a, grads[n], cfg.bias_rate, c))
        self.pref.copy_(self.written(self.pref, a, pref, cfg.pref_rate, c))


class MAMO(MetaLearner):
    Config = MAMOConfig
    data_kinds = ("rating",)  # what metarec/config/fit.py checks, before any data is read

    @classmethod
    def model_needs(cls, cfg) -> tuple[str, ...]:
        return ("mamo",)  # MAMO's towers and preference matrix (model=mamo)

    def __init__(self, cfg, model: nn.Module, kind: str, compile: bool = False, fast_paths: bool = True):
        if not isinstance(model, MAMONet):
            raise UserError("algo=mamo needs model=mamo (MAMO's towers and preference matrix), "
                            f"not model={type(model).__name__.lower()}")
        if kind != "rating":
            raise UserError("algo=mamo predicts ratings: use it with data=movielens")
        self.local = model.param_groups()["local"]
        self.memory = Memory(model, cfg.memory_slots)
        super().__init__(cfg, model, kind)

    def meta_parameters(self) -> list[Tensor]:
        # pref.weight is never read: each user's preference matrix starts from the task memory
        return [p for n, p in self.model.named_parameters() if n != "pref.weight"]

    def start(self, h_support: Tensor, track: bool) -> tuple[Tensor, Tensor, Params]:
        """(p_u, a_u, the local weights' start [tasks, ...]) for the tasks whose support features are h_support."""
        p_u = self.model.profile(h_support[:, 0])  # every row of a task is the same user
        a = self.memory.attention(p_u)
        bias, pref = self.memory.read(a)
        params = dict(self.model.named_parameters())
        fast = {}
        for n in self.local:
            w = params[n] if track else params[n].detach()
            w = w.unsqueeze(0).expand(len(a), *w.shape)
            if n in bias:
                w = w - self.cfg.bias_scale * bias[n]
            elif n == "pref.weight":
                w = pref
            fast[n] = w if track and w.requires_grad else w.clone().requires_grad_(True)
        return p_u, a, fast

    def local_update(self, fast: Params, h: Tensor, y: Tensor, mask: Tensor, steps: int, track: bool,
                     on_step=None) -> Params:
        """`steps` SGD steps of rate rho on each task's masked mean support loss, its gradient written
        out (MAMONet.head_grads: no autograd.grad, which second order would differentiate again)."""
        create_graph = track and not self.cfg.first_order
        lr = float(self.cfg.inner_lr)  # read once: a DictConfig lookup per weight and step costs ~10 ms a meta-step
        scale = (2.0 * mask / mask.sum(1, keepdim=True).clamp(min=1.0)).unsqueeze(-1)  # [tasks, n, 1]
        target = (self.model.offset - y).unsqueeze(-1) * scale
        hs = self.model.split(h)
        if on_step is not None:
            on_step(0, fast)
        for k in range(1, steps + 1):
            with torch.enable_grad() if create_graph else torch.no_grad():  # first order: constants
                grads = self.model.head_grads(fast, hs, target, scale)
            with torch.enable_grad() if track else torch.no_grad():
                fast = {n: torch.add(w, grads[n], alpha=-lr) for n, w in fast.items()}
            if on_step is not None:
                on_step(k, fast)
        return fast

    def forward_batch(self, batch: TaskBatch) -> tuple[Tensor, tuple]:
        """The meta-loss and what the memory write reads (a_u, p_u, the adapted local weights)."""
        h_s, h_q = self.model.encoder(batch.support_x), self.model.encoder(batch.query_x)
        p_u, a, fast = self.start(h_s, track=True)
        fast = self.local_update(fast, h_s, batch.support_y, batch.support_mask, self.cfg.inner_steps, track=True)
        loss = masked_task_loss(self.model.head_batched(fast, h_q), batch.query_y, batch.query_mask, self.kind)
        return loss.mean(), (a, p_u, fast)

    def meta_loss(self, batch: TaskBatch) -> Tensor:
        return self.forward_batch(batch)[0]

    def step(self, batch: TaskBatch) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        loss, (a, p_u, fast) = self.forward_batch(batch)
        names = self.memory.user_names
        # the fast gradients: each task's query-loss gradient at its adapted user tower (loss is the mean: x tasks)
        grads = torch.autograd.grad(loss, [fast[n] for n in names], retain_graph=True)
        loss.backward()
        self.apply_update()
        self.memory.write(a.detach(), p_u.detach(), {n: g * len(a) for n, g in zip(names, grads)},
                          fast["pref.weight"].detach(), self.cfg)
        return {"loss": loss.item()}

    def reference_loss(self, batch: TaskBatch) -> Tensor:
        """The meta-loss task by task on the unpadded examples, with plain autograd and the module itself
        (functional_call): the tests' oracle and the bench's baseline. Reads the memory, writes nothing."""
        params = dict(self.model.named_parameters())
        losses = []
        for i in range(batch.n_tasks):
            s, q = batch.support_mask[i].bool(), batch.query_mask[i].bool()
            xs, ys, xq, yq = batch.support_x[i][s], batch.support_y[i][s], batch.query_x[i][q], batch.query_y[i][q]
            p = self.model.profile(self.model.encoder(xs[:1]))[0]
            m_p = self.memory.profile
            a = ((m_p @ p) / (m_p.norm(dim=1) * p.norm())).softmax(0)
            fast = {n: params[n] for n in self.local}
            for n, m in self.memory.bias().items():
                fast[n] = fast[n] - self.cfg.bias_scale * sum(a[k] * m[k] for k in range(len(a)))
            fast["pref.weight"] = sum(a[k] * self.memory.pref[k] for k in range(len(a)))
            for _ in range(self.cfg.inner_steps):
                loss = ((functional_call(self.model, {**params, **fast}, (xs,)) - ys) ** 2).mean()
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not self.cfg.first_order)
                fast = {n: w - self.cfg.inner_lr * g for (n, w), g in zip(fast.items(), grads)}
            losses.append(((functional_call(self.model, {**params, **fast}, (xq,)) - yq) ** 2).mean())
        return torch.stack(losses).mean()

    def adapt_trace(self, batch: TaskBatch, steps: int, at: list[int] | None = None) -> list[Tensor]:
        """Query predictions after 0..steps local steps from each user's memory-read start (no write)."""
        with torch.no_grad():
            h_s, h_q = self.model.encoder(batch.support_x), self.model.encoder(batch.query_x)
            _, _, fast = self.start(h_s, track=False)
        preds: list[Tensor] = []

        def record(k: int, w: Params) -> None:
            if at is None or k in at:
                with torch.no_grad():
                    preds.append(self.model.head_batched(w, h_q))

        self.local_update(fast, h_s, batch.support_y, batch.support_mask, steps, track=False, on_step=record)
        return preds

    def state_dict(self) -> dict:
        return {**super().state_dict(), "memory": {k: v.clone() for k, v in self.memory.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.memory.load_state_dict(state["memory"])
