"""What every algorithm shares: the config keys the trainer reads for any algorithm, the model, the
outer optimizer over its meta-parameters, the data-parallel hook, and a meta-step that is the
backward of its meta-loss. Each algorithm's own keys live in its file's config dataclass."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from omegaconf import MISSING
from torch import Tensor

from metarec.checks import rule
from metarec.errors import UserError
from metarec.models.base import Model
from metarec.tasks import TaskBatch, liked_rating


@dataclass
class AlgoConfig:
    """The keys of every algorithm's schema (the trainer and evaluation read them whatever the algo)."""

    name: str = MISSING  # a key of metarec.algos.ALGOS (metarec/config/fit.py refuses any other)
    inner_steps: int = rule(1, ">= 0")  # adaptation steps in meta-training
    eval_steps: Optional[int] = rule(None, ">= 0")  # adaptation steps for the headline metric; null = inner_steps
    meta_lr: float = rule(1e-3, "> 0")  # beta: the outer optimizer's learning rate
    weight_decay: float = rule(0.0, ">= 0")  # the outer optimizer's


def adapted_names(model: Model, group: str) -> list[str]:
    """The parameters of the model's group `group` (algo.inner_params), or one line naming the groups it has."""
    groups = model.param_groups()
    if group in groups:
        return groups[group]
    hint = (" (prompt vectors: algo=prompt with algo.prompt_len and algo.prompt_dim > 0)"
            if group == "prompt" else "")
    raise ValueError(f"algo.inner_params={group!r}: model {type(model).__name__.lower()} has no such parameter group; "
                     f"it has {', '.join(groups)}{hint}")


class MetaLearner:
    """Subclasses give meta_loss (and adapt_trace for evaluation); they set their own parameters up
    before calling this constructor, which builds Adam over meta_parameters(). `Config` is the
    algorithm's schema (conf/algo/NAME.yaml builds on it)."""

    Config = AlgoConfig
    data_kinds = ("rating", "regression", "classification")  # the data it fits (metarec/config/fit.py)
    reads: tuple[str, ...] = ()  # the feature sides it needs of a rating data set ("user", "item": its content)
    one_pass = False  # evaluation: adaptation is one forward pass, not steps (TaNP), so no step trace
    select_state = "val"  # the validation state the trainer keeps the best checkpoint on

    @classmethod
    def model_needs(cls, cfg) -> tuple[str, ...]:
        """What the model must offer (its class's `offers`, e.g. "prompt"), checked before data is read."""
        return ()

    @classmethod
    def data_needs(cls, data_cfg) -> str | None:
        """What it needs of the data's config beyond its kind (e.g. item ids), in words; None: nothing."""
        return None

    def __init__(self, cfg, model: Model, kind: str):
        self.cfg, self.model, self.kind = cfg, model, kind
        self._optimizer: torch.optim.Optimizer | None = None  # made when first used (see `optimizer`)
        self._optimizer_state: dict | None = None  # a checkpoint's, loaded into it then
        self.sync = None  # data-parallel training: averages the meta-gradients across ranks before a step

    @classmethod
    def model_options(cls, cfg) -> dict:
        """What this algorithm asks of the model it trains (e.g. prompt vectors), passed to from_config."""
        return {}

    def selectable(self) -> bool:
        """Whether the trainer may keep the weights of this moment as best.pt (a two-phase learner's base
        phase is not the method: cold_items.py)."""
        return True

    def phase(self) -> str | None:
        """Which training phase the weights come from, for eval.json; None: the algorithm has one."""
        return None

    def attach(self, source) -> None:
        """Called once the task source is built, for an algorithm that reads it itself (item tasks)."""

    def enter_state(self, state: str) -> None:
        """Called before evaluation scores `state`, for an algorithm that reads what the state shows
        (TaskSource.visible: the source records the read, so the state's row is transductive)."""

    def meta_parameters(self) -> list[Tensor]:
        return list(self.model.parameters())

    def meta_loss(self, batch: TaskBatch) -> Tensor:
        raise NotImplementedError

    def adapt_trace(self, batch: TaskBatch, steps: int, at: list[int] | None = None) -> list[Tensor]:
        raise NotImplementedError

    def step(self, batch: TaskBatch) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.meta_loss(batch)
        loss.backward()
        self.apply_update()
        return {"loss": loss.item()}

    def apply_update(self) -> None:
        if self.sync is not None:
            self.sync(self.meta_parameters())
        self.optimizer.step()

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """Adam over meta_parameters(), made at its first use: constructing a torch optimizer imports
        torch's compiler stack (about 1.7 s), which `metarec eval` and `recommend` never need."""
        if self._optimizer is None:
            self._optimizer = torch.optim.Adam(self.meta_parameters(), lr=self.cfg.meta_lr, weight_decay=self.cfg.weight_decay)
            if self._optimizer_state is not None:
                self._optimizer.load_state_dict(self._optimizer_state)
                self._optimizer_state = None
        return self._optimizer

    @optimizer.setter
    def optimizer(self, optimizer: torch.optim.Optimizer) -> None:  # an algorithm with an optimizer of its own
        self._optimizer, self._optimizer_state = optimizer, None

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self._optimizer is None:
            self._optimizer_state = state["optimizer"]  # loaded when the optimizer is made
        else:
            self._optimizer.load_state_dict(state["optimizer"])


class LikedClass:
    """What the two LWA / NLBA (user tasks: lwa_users.py; item tasks: lwa.py) share: the rating at or above
    which a support rating is in the liked class, algo.like_threshold or, when that is null, the data's
    liked rating (metarec.tasks.liked_rating: 4 on 1-5), read at attach() and kept in the checkpoint.
    Put before the algorithm's base class: attach and the state chain on to it."""

    _data_like: float | None = None  # the data's liked rating, once attach() or a checkpoint gave it

    @property
    def like(self) -> float | None:
        return self.cfg.like_threshold if self.cfg.like_threshold is not None else self._data_like

    def liked(self) -> float:
        """The threshold, or one line saying that none is known yet."""
        if self.like is None:
            raise UserError(f"algo={self.cfg.name} takes its liked rating from the data's scale, and no data was "
                            "attached: set algo.like_threshold")
        return self.like

    def attach(self, source) -> None:
        super().attach(source)
        self._data_like = liked_rating(source.rating_scale)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "like": self.like}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._data_like = state.get("like", self._data_like)  # a checkpoint from before it was kept: the data's
