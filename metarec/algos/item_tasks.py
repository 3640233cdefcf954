"""Item-centric episodes for the item-cold-start learners (MetaEmb, MWUF): a task is one existing item,
its two mini-batches (a, b) drawn at random from the ratings that meta-train users gave it in the
training pool (never a query, never a validation or test user). Padded [items, K] like the user tasks,
so a meta-batch of items is one gather; built once from the task source's training ratings."""
from __future__ import annotations

import torch
from torch import Tensor

from metarec.errors import UserError
from metarec.tasks import TaskBatch


class ItemTasks:
    """Episodes over the items that have at least two training ratings (one per mini-batch)."""

    def __init__(self, source, shots: int):
        if shots < 1:
            raise UserError(f"algo.item_shots={shots} must be at least 1 (ratings per mini-batch of an item task)")
        self.source, self.shots = source, shots
        device = source.y.device
        ratings = torch.as_tensor(source.train_ratings, device=device)
        items = source.rating_item[ratings]
        order = items.argsort(stable=True)
        ratings, items = ratings[order], items[order]
        ids, counts = items.unique_consecutive(return_counts=True)
        keep = counts >= 2
        if not bool(keep.any()):
            raise UserError("no existing item has two training ratings: item-centric tasks need them")
        starts = torch.cumsum(counts, 0) - counts
        width = int(counts[keep].max())
        pos = torch.arange(width, device=device)
        index = (starts[keep, None] + pos[None]).clamp(max=len(ratings) - 1)
        self.count = counts[keep]  # [items]
        self.mask = pos[None] < self.count[:, None]  # [items, width]
        self.pool = torch.where(self.mask, ratings[index], torch.zeros_like(index))  # rating indices, padded
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
        return item_batch(self.source, a, (pos < n_a[:, None]).float(), b, (pos < n_b[:, None]).float(), generator)


def item_batch(source, a: Tensor, a_mask: Tensor, b: Tensor, b_mask: Tensor, generator: torch.Generator) -> TaskBatch:
    """The model inputs of rating indices a (support) and b (query), as a training episode's: the
    source's own assembly (item context re-drawn per episode, item-id dropout). MovieLensTasks has no
    public name for it yet; its _batch takes any padded rating indices, users' or items'."""
    return source._batch(a, a_mask, b, b_mask, generator)
