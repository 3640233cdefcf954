"""The task batch every data set produces and every algorithm consumes, and the task-source interface
every data set implements: everything an algorithm, the evaluation, a run and a recommender read of a
data set is declared here (torch only)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    import numpy as np

INDUCTIVE, TRANSDUCTIVE = "inductive", "transductive"  # a row's input class (DESIGN.md, "Inductive or transductive")


def liked_rating(scale: tuple[float, float]) -> float:
    """The rating at or above which a user liked an item: 4 on a 1-5 scale, the same place on any other
    (7.5 on 0-10: 8, 9 and 10 are liked). The catalogue ranking's relevant items, LWA's liked class."""
    lo, hi = scale
    return lo + 0.75 * (hi - lo)


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


@dataclass
class Visible:
    """The ratings a state shows at test time (TaskSource.visible): one entry per rating, all [n]."""

    users: Tensor  # the rater's user row
    items: Tensor  # the item's row
    ratings: Tensor  # float
    rows: Tensor  # the rating's index into the source's ratings (TaskSource.y)

    def select(self, keep: Tensor) -> "Visible":
        """The entries `keep` (a mask or indices) picks."""
        return Visible(self.users[keep], self.items[keep], self.ratings[keep], self.rows[keep])


@dataclass
class Catalog:
    """One state's catalogue ranking problem (TaskSource.catalog): every task ranks the same items. Each
    task's candidates and relevant items are kept as its own item lists, and made into [tasks, N] masks a
    chunk of tasks at a time (masks), so nothing of size tasks x items outlives a chunk."""

    items: Tensor  # [N] item rows: the state's item pool (existing or new items with at least one rating)
    support_items: Tensor  # [tasks, S] item rows of the support set (-1: padding): not candidates
    liked_items: Tensor  # [tasks, Q] item rows of the query items rated >= the source's liked rating (-1: none): relevant
    support_size: Tensor  # [tasks] ratings in the support set
    pool: str  # what the items are, in words ("existing items", "new items")
    n_items: int  # item rows of the data set
    liked: float = 4.0  # the rating at or above which a query item is relevant (4 on a 1-5 scale)

    def masks(self, tasks: slice) -> tuple[Tensor, Tensor]:
        """candidate [t, N] (a pool item not in the task's support set) and relevant [t, N] (a liked query
        item), bool, for the tasks `tasks`."""
        where = torch.full((self.n_items + 1,), len(self.items), dtype=torch.long, device=self.items.device)
        where[self.items] = torch.arange(len(self.items), device=self.items.device)  # pool position; N: none or padding
        out = []
        for listed, fill in ((self.support_items[tasks], True), (self.liked_items[tasks], False)):
            at = where[torch.where(listed >= 0, listed, self.n_items)]  # [t, S] positions, N where none
            mask = torch.full((len(listed), len(self.items) + 1), fill, dtype=torch.bool, device=listed.device)
            out.append(mask.scatter_(1, at, not fill)[:, :-1])
        return out[0], out[1]

    @property
    def candidate(self) -> Tensor:
        """[tasks, N] for every task at once (small data and tests; evaluation asks masks per chunk)."""
        return self.masks(slice(None))[0]

    @property
    def relevant(self) -> Tensor:
        return self.masks(slice(None))[1]


class TaskSource:
    """What the trainer, the evaluation, the algorithms and a recommender ask of a data set (MovieLens, any
    RecBole atomic set, sinusoid, Omniglot): each one subclasses this, and metarec.data.DATASETS finds it by
    name. Nothing else of a source is read outside metarec/data. The defaults are a generated data set's: no
    source files, no floors, a fingerprint that names the generator.

    A source of kind "rating" also has a rating table, and implements the members under "rating data"
    below (item-centric algorithms, the transductive input, the catalogue ranking and `metarec recommend`
    read them); no other kind has them, so whoever reads them asks `kind == "rating"` first."""

    kind: str  # "rating" | "regression" | "classification": picks the loss and the metrics
    device: torch.device  # where the source's tensors live: its task batches, y and rating_item
    source_files: Sequence[Path] = ()  # the files the data was read from (run_info.json lists them)
    folder: Path | None = None  # the folder the data was read from (None: generated)
    rating_scale: tuple[float, float] | None = None  # a rating data set's (lowest, highest) rating
    cut_info: Mapping = MappingProxyType({})  # a rating data set's new-item cut, as `metarec data info` shows it

    # ---- rating data (kind "rating") ---------------------------------------------------------------
    num_items: int  # item rows: every item row below is in 0..num_items-1
    y: Tensor  # [ratings] float: each rating's value, on `device`; a rating index below indexes it
    rating_item: Tensor  # [ratings] long: each rating's item row, on `device`
    train_ratings: "np.ndarray"  # [n] int64: the meta-training ratings' indices (meta-train users' support ratings)

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

    def visible(self, state: str) -> Visible | None:
        """The ratings `state` shows at test time: "train" the meta-train ratings, another state its tasks'
        support ratings, which a transductive method may read (the source records the read: input_class);
        None: the data set has no such ratings."""
        return None

    def input_class(self, state: str) -> str:
        """What evaluation read to predict in `state`, as the source recorded it: "transductive" where any
        input was counted over the state's support sets (other tasks' ratings, never a query), else
        "inductive" (training ratings and each task's own support set)."""
        return INDUCTIVE

    def floor_classes(self) -> dict[str, str]:
        """Each floor's input class by name, as the floor declares it (floors() computes them)."""
        return {}

    def rows_batch(self, support: Tensor, support_mask: Tensor, query: Tensor, query_mask: Tensor,
                   generator: torch.Generator | None = None, context: str = "train") -> TaskBatch:
        """Rating data: the task batch of padded rating indices support, query [tasks, n] (with their float
        masks), as the source builds its own: the inputs of training episodes when `generator` is given and
        context is "train" (their random parts drawn from it), else those of state `context`."""
        raise NotImplementedError

    def catalog(self, state: str) -> Catalog:
        """Rating data: the catalogue ranking problem of `state`'s tasks."""
        raise NotImplementedError

    def catalog_rows(self, state: str, tasks: slice, items: Tensor) -> Tensor:
        """Rating data: the model inputs x [tasks, N, F] of `state`'s tasks `tasks` with every item row of
        `items` [N], as the state's query rows read them."""
        raise NotImplementedError

    def catalog_floors(self, state: str, items: Tensor) -> dict[str, Tensor]:
        """Rating data: each non-learned ranking's score [N] of the item rows `items` in `state`, by name."""
        raise NotImplementedError

    def item_rows(self, items: Tensor, user: dict | None = None, factor_fold: int | None = None) -> Tensor:
        """Rating data: the model inputs x [N, F] of a new user (features `user`, by name) with the item rows
        `items`, as meta-training's rows read them; factor_fold: which item-factor table the user reads
        (None: the one fitted on every training rating, where the source has factors)."""
        raise NotImplementedError

    def user_codes(self, features: dict | None = None) -> Tensor:
        """Rating data: a new user's feature row [F'] (only its user columns count) from `features` by name;
        a feature not given takes the meta-train users' most common code."""
        raise NotImplementedError

    def item_labels(self) -> tuple[list, list[str]]:
        """Rating data: the data set's own id and a title of every item row."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """What a checkpoint records to refuse other data: SHA-256 of the source files where there are some."""
        return f"generated:{type(self).__name__}"

    def info(self) -> dict:
        """`metarec data info`: the data set's facts."""
        raise NotImplementedError
