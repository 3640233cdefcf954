"""Small generated task batches and a MeLU spec for unit tests."""
from __future__ import annotations

import torch

from metarec.tasks import TaskBatch

SPEC = {"fields": [["gender", 3], ["age", 8], ["occupation", 6], ["zip", 4], ["year", 5]],
        "multi_hot": ["genre", 4], "offset": 3.5}


def rating_batch(n_tasks=4, support=(3, 7), query=(2, 5), dtype=torch.float64, seed=0, spec=SPEC) -> TaskBatch:
    """Tasks of different support/query sizes, padded; field values in range, ratings 1-5."""
    g = torch.Generator().manual_seed(seed)
    sizes = [size for _, size in spec["fields"]]
    n_multi = spec["multi_hot"][1]

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
