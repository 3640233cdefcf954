"""Item-centric episodes for the item-cold-start learners (MetaEmb, MWUF): a task is one existing item,
its two mini-batches (a, b) drawn at random from the ratings that meta-train users gave it in the
training pool (never a query, never a validation or test user). Padded [items, K] like the user tasks,
so a meta-batch of items is one gather; built once from the task source's training ratings. What they
read of the source is declared on metarec.tasks.TaskSource: y, rating_item, train_ratings, rows_batch
and visible."""
from __future__ import annotations

import torch
from torch import Tensor

from metarec.errors import UserError
from metarec.tasks import TaskBatch, TaskSource


class ItemTasks:
    """Episodes over the items that have at least two training ratings (one per mini-batch)."""

    def __init__(self, source: TaskSource, shots: int):
        """shots: algo.item_shots, within the rule its schema field declares (>= 1)."""
        self.source, self.shots = source, shots
        device = source.y.device
        ratings = torch.as_tensor(source.train_ratings, device=device)
        ids, counts, pool, mask = by_item(ratings, source.rating_item[ratings])
        keep = counts >= 2
        if not bool(keep.any()):
            raise UserError("no existing item has two training ratings: item-centric tasks need them")
        self.count = counts[keep]  # [items]
        self.mask = mask[keep]  # [items, width]; the widest item has two ratings or more, so no column is empty
        self.pool = pool[keep]  # rating indices, padded
        self.items = ids[keep]  # item rows of the raw table

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, n_items: int, generator: torch.Generator) -> TaskBatch:
        """n_items distinct items (fewer if there are fewer), each a first mini-batch (support) of
        min(K, n // 2) random ratings and a second (query) of min(K, n - that) others."""
        device = self.pool.device
        chosen = torch.randperm(len(self), generator=generator)[:n_items].to(device)
        pool, mask, count = self.pool[chosen], self.mask[chosen], self.count[chosen]
        keys = torch.rand(pool.shape, generator=generator).to(device) + (~mask) * 2.0  # padding last
        shuffled = pool.gather(1, keys.argsort(dim=1))
        n_a = torch.clamp(count // 2, max=self.shots)
        n_b = torch.clamp(count - n_a, max=self.shots)
        k = min(self.shots, pool.shape[1])
        pos = torch.arange(k, device=device)[None]
        a = shuffled[:, :k]
        b = shuffled.gather(1, (n_a[:, None] + pos).clamp(max=pool.shape[1] - 1))
        # the source's own assembly, as a training episode's (item context re-drawn, item-id dropout)
        return self.source.rows_batch(a, (pos < n_a[:, None]).float(), b, (pos < n_b[:, None]).float(), generator)


def by_item(rows: Tensor, items: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rating rows grouped by their item, padded: (item ids [items] ascending, counts [items], rows
    [items, width] padded with 0, mask [items, width] bool)."""
    order = items.argsort(stable=True)
    rows, items = rows[order], items[order]
    ids, counts = items.unique_consecutive(return_counts=True)
    pos = torch.arange(int(counts.max()), device=rows.device)
    mask = pos[None] < counts[:, None]
    index = ((torch.cumsum(counts, 0) - counts)[:, None] + pos[None]).clamp(max=len(rows) - 1)
    return ids, counts, torch.where(mask, rows[index], torch.zeros_like(index)), mask


def visible_item_tasks(source: TaskSource, state: str, cold: Tensor) -> tuple[Tensor, TaskBatch] | None:
    """The ratings `state` shows of each new item (source.visible: other users' support ratings in the
    same state, never a query) as one item task per item: (item rows [items], a TaskBatch whose support
    holds the item's visible ratings, padded; its query is a copy). cold: [table rows] bool, the ID rows
    of new items. None when the state shows none of them."""
    seen = source.visible(state)
    if seen is None:
        return None
    device = source.y.device
    rows, items = seen.rows.to(device), seen.items.to(device) + 1  # table row = item row + 1 (0: UNK)
    keep = cold[items]
    rows, items = rows[keep], items[keep]
    if not len(rows):
        return None
    ids, _, padded, mask = by_item(rows, items)
    m = mask.float()
    return ids, source.rows_batch(padded, m, padded, m, context=state)
