"""The pieces of the written-out oracles (tests/test_oracles_*.py): MeLU's field embeddings, its MLP
head and the per-task SGD inner loop, from a model's parameters alone, and the comparison with the
package. The oracles call no module's forward, no functional_call and no loss of the package, so a bug
in those cannot appear on both sides."""
from __future__ import annotations

import torch
from fixtures import SPEC, rating_batch
from torch import Tensor

FIELDS = [name for name, _ in SPEC["fields"]]  # one table each, then the genre flags
OFFSET = SPEC["offset"]  # the training mean the models predict around
Weights = dict[str, Tensor]


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return x @ weight.T if bias is None else x @ weight.T + bias


def fields(p: Weights, x: Tensor, prefix: str = "encoder.") -> Tensor:
    """One task's rows x [n, fields + genre flags] -> [n, (fields + 1) * dim]: each field's row of its own
    table, then the mean of the genre rows the movie has (zeros when it has none)."""
    looked_up = [p[f"{prefix}embeddings.{name}.weight"][x[:, k]] for k, name in enumerate(FIELDS)]
    genres = p[f"{prefix}multi.weight"]  # [genres, dim]
    pooled = [genres[row.nonzero()[:, 0]].mean(0) if bool(row.any()) else torch.zeros_like(genres[0])
              for row in x[:, len(FIELDS):]]
    return torch.cat(looked_up + [torch.stack(pooled)], 1)


def relu_mlp(p: Weights, prefix: str, h: Tensor) -> Tensor:
    """The linear layers prefix.K.weight / .bias in the order of K, a ReLU after each but the last."""
    ks = sorted(int(n[len(prefix):].split(".")[0]) for n in p if n.startswith(prefix) and n.endswith(".weight"))
    for j, k in enumerate(ks):
        h = linear(h, p[f"{prefix}{k}.weight"], p[f"{prefix}{k}.bias"])
        if j < len(ks) - 1:
            h = torch.relu(h)
    return h


def melu(p: Weights, x: Tensor) -> Tensor:
    """MeLU's ratings [n]: field embeddings, the prompt vectors one after another on every row (when the
    model has them), ReLU layers, one output around the offset."""
    h = fields(p, x)
    if "head.prompt" in p:
        h = torch.cat([h, torch.cat(list(p["head.prompt"])).expand(len(h), -1)], 1)
    return OFFSET + relu_mlp(p, "head.net.", h)[:, 0]


def real_rows(batch, i: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Task i's support x, y and query x, y without their padding."""
    s, q = batch.support_mask[i] > 0, batch.query_mask[i] > 0
    return batch.support_x[i][s], batch.support_y[i][s], batch.query_x[i][q], batch.query_y[i][q]


def sgd_meta_loss(batch, forward, start, lr, steps: int, first_order: bool) -> Tensor:
    """The mean over tasks of the query's mean squared error after `steps` SGD steps on the support's,
    one task at a time on its real rows: forward(fast, x) -> ratings [n], start(x_support) -> the adapted
    weights' start, lr a number or name -> a tensor of per-weight rates (Meta-SGD). First order: the
    inner gradients are constants, so the meta-gradient does not pass through them."""
    losses = []
    for i in range(batch.n_tasks):
        xs, ys, xq, yq = real_rows(batch, i)
        fast = sgd(forward, start(xs), xs, ys, lr, steps, first_order)
        losses.append(((forward(fast, xq) - yq) ** 2).mean())
    return torch.stack(losses).mean()


def sgd(forward, fast: Weights, x: Tensor, y: Tensor, lr, steps: int, first_order: bool) -> Weights:
    """fast after `steps` SGD steps on one task's mean squared error over (x, y) (see sgd_meta_loss)."""
    for _ in range(steps):
        loss = ((forward(fast, x) - y) ** 2).mean()
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
        fast = {n: w - (lr[n] if isinstance(lr, dict) else lr) * g for (n, w), g in zip(fast.items(), grads)}
    return fast


def assert_equals_oracle(got: Tensor, want: Tensor, params: Weights) -> Weights:
    """got (the package's meta-loss) equals want (the oracle's) in value and in its gradient with respect
    to every one of params, float64 1e-10; the oracle's gradient is not zero everywhere. Returns it."""
    assert torch.allclose(got, want, atol=1e-12, rtol=0), (got.item(), want.item())
    a = torch.autograd.grad(got, list(params.values()), allow_unused=True)
    b = torch.autograd.grad(want, list(params.values()), allow_unused=True)
    oracle = {}
    for (n, p), x, y in zip(params.items(), a, b):
        x = torch.zeros_like(p) if x is None else x
        oracle[n] = torch.zeros_like(p) if y is None else y
        assert torch.allclose(x, oracle[n], atol=1e-10, rtol=0), (n, (x - oracle[n]).abs().max().item())
    assert sum(float(g.abs().sum()) for g in oracle.values()) > 0
    return oracle


def assert_maml_on_melu_is_the_oracle(model, algo, adapted: list[str], first_order: bool, lr: float = 0.3,
                                      steps: int = 2) -> Weights:
    """algo (MAML's inner loop, `steps` steps of rate lr) on MeLU `model` against the oracle that adapts the
    weights `adapted`, on five tasks with padding in their support and query sets; returns the gradient."""
    batch = rating_batch(n_tasks=5, support=(1, 7))
    assert batch.support_mask.min() == 0 and batch.query_mask.min() == 0
    params = dict(model.named_parameters())
    want = sgd_meta_loss(batch, lambda fast, x: melu({**params, **fast}, x),
                         lambda xs: {n: params[n] for n in adapted}, lr, steps, first_order)
    return assert_equals_oracle(algo.meta_loss(batch), want, params)
