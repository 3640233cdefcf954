"""The task batch every data set produces and every algorithm consumes (torch only)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor


@dataclass
class TaskBatch:
    """A batch of few-shot tasks, padded to a common length; masks mark the real examples."""

    support_x: Tensor  # [tasks, support, *input]
    support_y: Tensor  # [tasks, support] float targets or long class labels
    support_mask: Tensor  # [tasks, support] float, 1 = real example
    query_x: Tensor  # [tasks, query, *input]
    query_y: Tensor  # [tasks, query]
    query_mask: Tensor  # [tasks, query]

    @property
    def n_tasks(self) -> int:
        return self.support_x.shape[0]

    def to(self, device: torch.device | str) -> "TaskBatch":
        return TaskBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, index: Tensor | slice) -> "TaskBatch":
        """The tasks at `index` (a slice or an index tensor over the task dimension)."""
        return TaskBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def merged(self) -> "TaskBatch":
        """Support and query joined as one training set per task (Reptile, pretrain)."""
        cat = lambda a, b: torch.cat([a, b], dim=1)  # noqa: E731
        return TaskBatch(
            cat(self.support_x, self.query_x), cat(self.support_y, self.query_y),
            cat(self.support_mask, self.query_mask), self.query_x, self.query_y, self.query_mask,
        )


class TaskSource(Protocol):
    """What the trainer needs from a data set (MovieLens, sinusoid, Omniglot)."""

    kind: str  # "rating" | "regression" | "classification": picks the loss and the metrics

    def sample_train(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        """Fresh meta-training episodes, drawn with `generator` only (so a resumed run matches)."""

    def eval_tasks(self, split: str) -> dict[str, TaskBatch]:
        """Fixed evaluation tasks: split "val" -> {"val": ...}; "test" -> one batch per state."""

    def model_spec(self) -> dict:
        """What the model needs to know about the inputs (field sizes, classes...)."""
