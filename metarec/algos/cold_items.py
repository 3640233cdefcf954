"""What the item-cold-start learners (MetaEmb, MWUF) share: a base model with item ID embeddings
(MeLU with data.item_ids=true) trained as algo=pretrain trains it (phase 1, algo.pretrain_steps), then
frozen while small networks (`nets`) meta-learn new items' ID embeddings on item tasks built from the
training ratings (phase 2: metarec/algos/item_tasks.py). At evaluation each item without a training
rating reads the row its learner writes for it in the base model's table (cold_rows; with ratings
the state shows of it, warm_rows, before the state is scored: transductive); the rest is algo=pretrain's
evaluation, the decision layers fine-tuned on each user's support set. Model selection on val_new
(validation users on new items: what the networks are for)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metarec.algos.item_tasks import ItemTasks, visible_item_tasks
from metarec.algos.pretrain import Pretrain, PretrainConfig
from metarec.checks import rule
from metarec.engine import masked_task_loss
from metarec.errors import UserError
from metarec.tasks import TaskBatch, TaskSource

ITEM = "encoder.embeddings.item.weight"


@dataclass
class ColdItemConfig(PretrainConfig):
    """algo=pretrain's keys (phase 1 and evaluation) and the item tasks' of phase 2."""

    pretrain_steps: int = rule(1000, ">= 0")  # phase 1: supervised steps of the base model; the networks train after
    item_shots: int = rule(10, ">= 1")  # K: ratings per mini-batch of an item task
    items_per_step: int = rule(64, ">= 1")  # items per phase-2 meta-batch


def item_features(encoder: nn.Module, x: Tensor) -> Tensor:
    """[..., item side width]: the embeddings of each rating's item content, the data's item fields and
    pooled multi-hot blocks (MovieLens: the year bucket and the genres; x: the model input), detached:
    the base model is frozen while the networks learn."""
    return encoder.side(x, "item").detach()


def user_features(encoder: nn.Module, x: Tensor) -> Tensor:
    """[..., user side width]: the rater's embeddings (MeLU has no user ID: the data's user fields stand
    in; MovieLens: gender, age, occupation, zip), detached."""
    return encoder.side(x, "user").detach()


class ColdItemLearner(Pretrain):
    data_kinds = ("rating",)  # what metarec/config/fit.py checks, before any data is read
    select_state = "val_new"  # the trainer keeps the checkpoint best on validation users' new items
    warm_up = False  # whether evaluation reads the ratings a state shows of its new items (transductive)

    @classmethod
    def model_needs(cls, cfg) -> tuple[str, ...]:
        return ("fields",)  # MeLU's field embeddings, the item id among them

    @classmethod
    def data_needs(cls, data_cfg) -> str | None:
        if not data_cfg.get("item_ids", False):
            return "it learns new items' ID embeddings: set data.item_ids=true (its presets do)"
        return None

    def __init__(self, cfg, model: nn.Module, kind: str, compile: bool = False, fast_paths: bool = True):
        if kind != "rating" or "fields" not in model.offers or "item" not in model.encoder.field_names:
            raise ValueError(f"algo={cfg.name} learns new items' ID embeddings: it needs model=melu on a rating "
                             "data set with data.item_ids=true")
        weight, enc = model.get_parameter(ITEM), model.encoder
        whose = {"user": "raters' user", "item": "item's content"}
        for side in self.reads:
            enc.require(side, f"algo={cfg.name} reads the {whose[side]} fields")
        self.dim, self.item_col = weight.shape[1], enc.field_names.index("item")
        self.widths = {side: enc.side_width(side) for side in ("user", "item")}  # the networks' input widths
        self.nets = self.build_nets(cfg, self.dim).to(weight)
        self.known = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)  # attach() marks new items
        self.items: ItemTasks | None = None
        self.sampler = torch.Generator().manual_seed(torch.initial_seed() + 1)  # the item episodes' own stream
        self.steps_done, self._table, self.source, self.warmed = 0, None, None, None
        super().__init__(cfg, model, kind, compile=compile, fast_paths=fast_paths)
        self.optimizer = torch.optim.Adam(
            [{"params": list(model.parameters())},
             {"params": list(self.nets.parameters()), "lr": self.nets_lr(), "weight_decay": 0.0}],
            lr=cfg.meta_lr, weight_decay=cfg.weight_decay)

    # what a learner gives
    def build_nets(self, cfg, dim: int) -> nn.Module:
        raise NotImplementedError

    def nets_lr(self) -> float:
        raise NotImplementedError

    def cold_rows(self, x: Tensor) -> Tensor:
        """The ID row [n, dim] of each rating's new item when its state shows no rating of it (x [n, F])."""
        raise NotImplementedError

    def warm_rows(self, batch: TaskBatch) -> Tensor:
        """The ID rows [items, dim] of new items from the ratings a state shows (item tasks: support)."""
        raise NotImplementedError

    def attach(self, source: TaskSource) -> None:
        """The task source's training ratings: the item tasks of phase 2, and which ID rows were
        trained (an item with no training rating is new: it reads the learner's row)."""
        if source.kind != "rating":
            raise UserError(f"algo={self.cfg.name} needs item-centric tasks from a rating data set (data=movielens, atomic)")
        self.items, self.source = ItemTasks(source, self.cfg.item_shots), source
        trained = source.rating_item[torch.as_tensor(source.train_ratings, device=source.y.device)] + 1
        self.known = torch.zeros_like(self.known)
        self.known[0] = True  # UNK
        self.known[trained.to(self.known.device)] = True

    def meta_parameters(self) -> list[Tensor]:
        return super().meta_parameters() + list(self.nets.parameters())

    def start(self) -> Tensor:
        """The cold ID row of every new item before anything is learned of it: the mean of the trained
        ID rows [dim] (MWUF's and LWA / NLBA's start)."""
        return self.model.get_parameter(ITEM).detach()[self.known].mean(0)

    def item_outputs(self, x: Tensor, emb: Tensor) -> Tensor:
        """The model's predictions [items, n] of item tasks x [items, n, F] (every rating is of the task's
        item) with its ID embedding emb [items, dim] in place of the table's row."""
        h = self.model.encoder(x)
        lo = self.item_col * self.dim
        h = torch.cat([h[..., :lo], emb.unsqueeze(1).expand(-1, h.shape[1], -1), h[..., lo + self.dim:]], -1)
        return self.model.head(h)

    def item_loss(self, x: Tensor, y: Tensor, mask: Tensor, emb: Tensor) -> Tensor:
        """Each item task's mean squared error [items] with its ID embedding emb [items, dim] in place
        of the table's row."""
        return masked_task_loss(self.item_outputs(x, emb), y, mask, self.kind)

    def step(self, batch: TaskBatch) -> dict[str, float]:
        """Phase 1: algo=pretrain's step on the users' episode `batch`; phase 2: a step of the networks
        alone on fresh item tasks (the users' batch is not read)."""
        self.steps_done += 1
        if self.steps_done <= self.cfg.pretrain_steps:
            return super().step(batch)
        if self.items is None:
            raise UserError(f"algo={self.cfg.name} trains on item tasks from a rating source (data=movielens, atomic)")
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.meta_loss(self.items.sample(self.cfg.items_per_step, self.sampler))
        params = list(self.nets.parameters())
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        self.apply_update()
        return {"loss": loss.item()}

    def selectable(self) -> bool:
        """Only once the networks have trained: a checkpoint of the base phase is algo=pretrain's model
        with untrained networks, which would pass for this method."""
        return self.steps_done > self.cfg.pretrain_steps

    def phase(self) -> str:
        done = self.steps_done - self.cfg.pretrain_steps
        return f"networks (their step {done})" if done > 0 else "base (the networks untrained)"

    # ---- evaluation: new items read the learner's rows --------------------------------------------------
    def enter_state(self, state: str) -> None:
        """Evaluation is about to score `state` (metarec.evaluation.evaluate): a transductive learner reads the
        ratings the state shows of its new items (TaskSource.visible: other users' support ratings)."""
        self.warmed = None
        if not self.warm_up or self.source is None:
            return
        tasks = visible_item_tasks(self.source, state, ~self.known)
        if tasks is not None:
            ids, batch = tasks
            self.warmed = (ids, self.warm_rows(batch).detach())

    def cold_table(self, batch: TaskBatch) -> Tensor:
        """The ID table with every new item of the batch at the learner's row (detached)."""
        x = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
        ids = x[:, self.item_col]
        cold = ~self.known[ids]
        table = self.model.get_parameter(ITEM).detach().clone()
        with torch.no_grad():
            table[ids[cold]] = self.cold_rows(x[cold]).to(table)
            if self.warmed is not None:  # the rows the state's visible ratings gave
                table[self.warmed[0]] = self.warmed[1].to(table)
        return table

    def params(self):
        params = super().params()
        return params if self._table is None else {**params, ITEM: self._table}

    def adapt_trace(self, batch: TaskBatch, steps: int, at: list[int] | None = None) -> list[Tensor]:
        self._table = self.cold_table(batch)
        try:
            return super().adapt_trace(batch, steps, at)
        finally:
            self._table = None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "nets": self.nets.state_dict(), "steps_done": self.steps_done,
                "sampler": self.sampler.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.nets.load_state_dict(state["nets"])
        self.steps_done = state["steps_done"]
        self.sampler.set_state(state["sampler"])
