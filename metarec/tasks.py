"""The task batch every data set produces and every algorithm consumes, and the task-source interface
every data set implements (torch only)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType

import torch
from torch import Tensor

INDUCTIVE, TRANSDUCTIVE = "inductive", "transductive"  # a row's input class (DESIGN.md, "Inductive or transductive")


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


class TaskSource:
    """What the trainer and evaluation ask of a data set (MovieLens, sinusoid, Omniglot): each one
    subclasses this, and metarec.data.DATASETS finds it by name. The defaults are a generated data
    set's: no source files, no floors, a fingerprint that names the generator."""

    kind: str  # "rating" | "regression" | "classification": picks the loss and the metrics
    source_files: Sequence[Path] = ()  # the files the data was read from (run_info.json lists them)
    rating_scale: tuple[float, float] | None = None  # a rating data set's (lowest, highest) rating
    cut_info: Mapping = MappingProxyType({})  # a rating data set's new-item cut, as `metarec data info` shows it

    @classmethod
    def from_config(cls, cfg, device: torch.device, seed: int = 0, progress: bool = True) -> "TaskSource":
        """The source data.NAME's config describes (`seed`: the run's, for a seeded split)."""
        return cls(cfg, device)

    def model_spec(self) -> dict:
        """What the model needs to know about the inputs (field sizes, classes...)."""
        raise NotImplementedError

    def sample_train(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        """Fresh meta-training episodes, drawn with `generator` only (so a resumed run matches)."""
        raise NotImplementedError

    def eval_tasks(self, split: str) -> dict[str, TaskBatch]:
        """Fixed evaluation tasks: split "val" -> {"val": ...}; "test" -> one batch per state."""
        raise NotImplementedError

    def floors(self, state: str) -> dict[str, Tensor] | None:
        """Query predictions [tasks, Q] of non-learned baselines on the tasks of `state`, by name; None: none."""
        return None

    def visible(self, state: str):
        """The ratings `state` shows at test time (metarec.data.transductive.Visible: user and item
        rows, ratings, input rows): "train" the meta-train ratings, another state its tasks' support
        ratings, which a transductive method may read; None: the data set has no such ratings."""
        return None

    def input_class(self, state: str) -> str:
        """What evaluation read to predict in `state`, as the source recorded it: "transductive" where any
        input was counted over the state's support sets (other tasks' ratings, never a query), else
        "inductive" (training ratings and each task's own support set)."""
        return INDUCTIVE

    def floor_classes(self) -> dict[str, str]:
        """Each floor's input class by name, as the floor declares it (floors() computes them)."""
        return {}

    def fingerprint(self) -> str:
        """What a checkpoint records to refuse other data: SHA-256 of the source files where there are some."""
        return f"generated:{type(self).__name__}"

    def info(self) -> dict:
        """`metarec data info`: the data set's facts."""
        raise NotImplementedError
