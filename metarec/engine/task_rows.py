"""Per-task embedding tables of the rows a task touches only (algo.inner_params=all on the fast path).

An inner step moves only the rows of a field's table that the task's support set indexes: every other
row's gradient is zero, so it stays theta's. A task's table is therefore kept as the rows it touches
([tasks, U, d], U at most the support width) with its support re-indexed into them, instead of a copy of
the whole table per task ([tasks, V, d]): on DBook (10,544 authors, 1,698 publishers) the whole-table
copies made an inner step of a 256-task evaluation chunk cost about a second. The whole table is formed
once, when the caller reads the fast weights (expand), as theta with each task's moved rows written in."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class TaskRows:
    """The rows each task touches in one table: rows [tasks, U] (padded), valid [tasks, U] (not padding),
    and local [tasks, n]: each support entry's position in its task's rows."""
    rows: Tensor
    valid: Tensor
    local: Tensor

    @classmethod
    def of(cls, index: Tensor) -> "TaskRows":
        """From one field's column of the support inputs [tasks, n] (padding entries included: their
        loss is masked, so their rows get a zero gradient and stay theta's)."""
        ordered, perm = index.sort(dim=1)
        first = torch.ones_like(ordered, dtype=torch.bool)
        first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        slot = first.long().cumsum(1) - 1  # each sorted entry's row position
        count = slot[:, -1] + 1
        width = int(count.max())
        rows = index.new_zeros(index.shape[0], width).scatter_(1, slot, ordered)  # equal values per slot
        local = torch.empty_like(index).scatter_(1, perm, slot)
        valid = torch.arange(width, device=index.device) < count.unsqueeze(1)
        return cls(rows, valid, local)

    @property
    def width(self) -> int:
        return self.rows.shape[1]

    def gather(self, table: Tensor) -> Tensor:
        """theta's rows of each task: [tasks, U, d] (differentiable in theta)."""
        return F.embedding(self.rows, table)

    def expand(self, table: Tensor, moved: Tensor) -> Tensor:
        """The whole table per task [tasks, V, d]: theta (table [V, d]) with each task's moved rows
        ([tasks, U, d]) written in; padding rows are left out (differentiable in both)."""
        tasks, (size, dim) = self.rows.shape[0], table.shape
        offset = torch.arange(tasks, device=table.device).unsqueeze(1) * size
        flat = (self.rows + offset)[self.valid]
        whole = table.unsqueeze(0).expand(tasks, size, dim).reshape(tasks * size, dim)
        return whole.index_copy(0, flat, moved[self.valid]).view(tasks, size, dim)


def worth_it(index: Tensor, table_rows: int) -> bool:
    """Keep a task's rows only where the table is larger than the support width (MovieLens' gender or
    age tables of a few rows are cheaper copied whole)."""
    return table_rows > index.shape[1]
