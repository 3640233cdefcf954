"""Small generated task batches and a MeLU spec for unit tests, the schema check of config nodes, and
the engine's fast-path variants the tests hold to the same oracle."""
from __future__ import annotations

import dataclasses

import torch
from omegaconf import OmegaConf

from metarec.models.melu import multi_blocks
from metarec.tasks import TaskBatch

SPEC = {"fields": [["gender", 3], ["age", 8], ["occupation", 6], ["zip", 4], ["year", 5]],
        "multi_hot": ["genre", 4], "offset": 3.5}
# DBook's shape: tables wider than any support set (10,544 authors), no multi-hot block
WIDE = {"fields": [["location", 40], ["author", 300], ["publisher", 60], ["year", 3]], "multi_hot": [], "offset": 3.5}


def rating_batch(n_tasks=4, support=(3, 7), query=(2, 5), dtype=torch.float64, seed=0, spec=SPEC) -> TaskBatch:
    """Tasks of different support/query sizes, padded; field values in range, ratings 1-5."""
    g = torch.Generator().manual_seed(seed)
    sizes = [size for _, size in spec["fields"]]
    n_multi = sum(width for _, width in multi_blocks(spec["multi_hot"]))

    def draw(max_len, lo, hi):
        lengths = torch.randint(lo, hi + 1, (n_tasks,), generator=g)
        x = torch.stack([torch.randint(0, s, (n_tasks, max_len), generator=g) for s in sizes], -1)
        flags = (torch.rand(n_tasks, max_len, n_multi, generator=g) < 0.4).long()
        y = torch.randint(1, 6, (n_tasks, max_len), generator=g).to(dtype)
        mask = (torch.arange(max_len)[None] < lengths[:, None]).to(dtype)
        return torch.cat([x, flags], -1), y, mask

    sx, sy, sm = draw(support[1], *support)
    qx, qy, qm = draw(query[1], *query)
    return TaskBatch(sx, sy, sm, qx, qy, qm)


def sinusoid_batch(n_tasks=3, support=(2, 5), query=4, seed=0) -> TaskBatch:
    """Float64 regression tasks of x [tasks, n, 1]; support sizes vary (padded, masked)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(support[0], support[1] + 1, (n_tasks,), generator=g)
    mask = (torch.arange(support[1])[None] < lengths[:, None]).double()
    return TaskBatch(torch.randn(n_tasks, support[1], 1, generator=g).double(),
                     torch.randn(n_tasks, support[1], generator=g).double(), mask,
                     torch.randn(n_tasks, query, 1, generator=g).double(),
                     torch.randn(n_tasks, query, generator=g).double(), torch.ones(n_tasks, query).double())


def image_batch(n_tasks=2, ways=3, shots=1, query=2, seed=0) -> TaskBatch:
    """Float64 N-way K-shot tasks of 28x28 images (labels class-major, as Omniglot's)."""
    g = torch.Generator().manual_seed(seed)

    def part(k):
        x = torch.rand(n_tasks, ways * k, 1, 28, 28, generator=g).double()
        return x, torch.arange(ways).repeat_interleave(k).repeat(n_tasks, 1), torch.ones(n_tasks, ways * k).double()

    return TaskBatch(*part(shots), *part(query))


def check_nodes(**nodes) -> None:
    """metarec.checks.check on the base schema holding these nodes (group -> a typed config node), as the
    CLI checks a composed config: a value outside its declared range raises the one UserError line."""
    from metarec.checks import check
    from metarec.config.schema import Config
    check(OmegaConf.merge(OmegaConf.structured(Config), nodes))


def fast_options(fast, gram: bool = True, written_backward: bool = True, **settings) -> None:
    """Set a HandPath (metarec/engine/groups.py) to one of its variants: gram=False keeps the first layer
    explicit in every group (no Gram form), written_backward=False takes second order through autograd
    over the inner steps instead of SecondOrderMAML's written pass back; settings (group_cost) are set."""
    if not gram:
        run = fast._run
        fast._run = lambda params, loop: dataclasses.replace(run(params, loop), gram=False)
    if not written_backward:
        fast._written_applies = lambda *args: False
    for key, value in settings.items():
        setattr(fast, key, value)
