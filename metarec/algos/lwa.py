"""algo=lwa_items / nlba_items: the ITEM-TASK TRANSPOSE of LWA and NLBA (Vartak et al., NeurIPS 2017), not
the paper's methods (those are algo=lwa / nlba, metarec/algos/lwa_users.py, on user tasks): a new item's
scorer adapted, in one forward pass, from the class-conditional means of the embeddings of the users who
rated it. It reads other users' support ratings of the new item: transductive (recorded: input_class).

Item-centric tasks (metarec/algos/item_tasks.py): a task is an item, its support some ratings users gave
it, its query other ratings of the same item. With f(u) a rater's embedding (MeLU has no user ID: its
user-field embeddings, from the frozen base) and f~(u) = [f(u), 1], the two class representations are
    R1 = sum over liked ratings (y >= algo.like_threshold) of f~(u) / n,   R0 = the same over the others,
and a query user u is scored as
    LWA:  base(u, j) + w_j . f~(u),  w_j = G1 R1 + G0 R0            (linear weight adaptation)
    NLBA: base(u, j | hidden bias b + W_e (V1 R1 + V0 R0)) + (v1 . R1 + v0 . R0)   (non-linear bias adaptation)
where base is MeLU (data.item_ids=true) trained as algo=pretrain trains it (phase 1, algo.pretrain_steps),
then frozen while G (LWA) or V, v (NLBA) are meta-trained on item tasks (phase 2, Adam algo.nets_lr,
zero start: both start at the base model). In NLBA the adapted vector V1 R1 + V0 R0 takes the new item's
ID slot, which enters MeLU's first layer linearly: it is the hidden layer's per-item bias W_e(V R); the
output bias v . R is the item's adapted output bias. All item tasks of a meta-batch in one padded batch.

Evaluation: before a state is scored, each new item's R0, R1 come from the ratings the state shows of it
(TaskSource.visible: other users' support sets, never a query), so both are transductive. A new item with
none shown has R0 = R1 = 0 (the base model with the cold row). Existing items (warm, user_cold, and the
existing items of the cold states) are scored by the base model alone: their trained ID row already is
the base's adaptation to their training ratings, and G / V / v were trained as a correction from the cold
row, so adding them on a trained row would count those ratings twice. The rest is algo=pretrain's
evaluation (decision layers fine-tuned on the user's support set); the adapted output term is added to
the query predictions after it.

Where ours departs from the paper (and RecBole-MetaRec's LWA / NLBA), and why:
- the paper's task is a user and its support the items (tweets) they engaged with or not; the issue asks
  for item tasks, the transpose: a new item and the users who rated it, which is the signal that beats
  the floor on new items here (DESIGN.md, "New items on ml-1m");
- explicit ratings and a squared error (MeLU's protocol, MAE), not engagement and log-loss: the two
  classes are the ratings at or above algo.like_threshold (liked; null: the data's liked rating, 4 on
  1-5, metarec.tasks.liked_rating) and below it; the paper's prediction
  has a global bias: ours adds the adapted term to the pretrained base model's prediction (a residual);
- R1, R0 are the class sums divided by the item's number of ratings (the class mean times the class's
  share) and f~ carries a constant 1: the plain class means drop how many raters liked the item, its
  mean rating, which is the item bias that the bias_transductive floor lives on (RecBole uses sums);
- the base network's weights are MeLU's, pretrained and frozen, not learned jointly with G / V, and
  NLBA's hidden-bias adaptation goes through the item's ID slot of MeLU's first layer (above);
- model selection on val_new (validation users on new items), not val.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from metarec.algos.base import LikedClass
from metarec.algos.cold_items import ColdItemConfig, ColdItemLearner, user_features
from metarec.algos.item_tasks import visible_item_tasks
from metarec.checks import rule
from metarec.engine import masked_task_loss
from metarec.tasks import TaskBatch


@dataclass
class LWAConfig(ColdItemConfig):
    """algo=lwa_items (conf/algo/lwa_items.yaml): algo=pretrain's keys, the item tasks' and the adaptation's."""

    name: str = "lwa_items"
    nets_lr: float = rule(0.001, "> 0")  # Adam lr of the adaptation weights (phase 2)
    # a rating at or above it is in the liked class (R1), below it in R0; null: 4 on 1-5, the same place on any scale
    like_threshold: Optional[float] = rule(None, "any")


@dataclass
class NLBAConfig(LWAConfig):
    """algo=nlba_items (conf/algo/nlba_items.yaml): as algo=lwa_items."""

    name: str = "nlba_items"


def class_means(f: Tensor, y: Tensor, mask: Tensor, threshold: float) -> Tensor:
    """[items, 2 (D + 1)]: R1 and R0 of each item task, from its raters' embeddings f [items, n, D], ratings
    y [items, n] and mask [items, n]: the sum of [f, 1] over each class divided by the item's count."""
    f1 = torch.cat([f, torch.ones_like(f[..., :1])], -1)
    liked = (y >= threshold).to(f.dtype) * mask
    n = mask.sum(1, keepdim=True).clamp(min=1.0)
    r1 = (f1 * liked.unsqueeze(-1)).sum(1) / n
    r0 = (f1 * (mask - liked).unsqueeze(-1)).sum(1) / n
    return torch.cat([r1, r0], -1)


def zero_linear(n_in: int, n_out: int) -> nn.Linear:
    """A linear map without bias that starts at zero: the adaptation starts at the base model."""
    layer = nn.Linear(n_in, n_out, bias=False)
    nn.init.zeros_(layer.weight)
    return layer


class LWA(LikedClass, ColdItemLearner):
    Config = LWAConfig
    warm_up = True  # R0, R1 of a new item come from the ratings its state shows of it
    reads = ("user",)  # the raters' embeddings f~(u)

    def __init__(self, cfg, model: nn.Module, kind: str, compile: bool = False, fast_paths: bool = True):
        self.out_w: Tensor | None = None  # [table rows, D + 1]: each new item's adapted output weights
        super().__init__(cfg, model, kind, compile=compile, fast_paths=fast_paths)

    def build_nets(self, cfg, dim: int) -> nn.Module:
        d = self.widths["user"] + 1  # f~: the user fields' embeddings (MovieLens: four) and a constant
        return nn.ModuleDict({"weights": zero_linear(2 * d, d)})  # w_j = G1 R1 + G0 R0

    def nets_lr(self) -> float:
        return self.cfg.nets_lr

    def adapt(self, r: Tensor) -> tuple[Tensor, Tensor]:
        """From the class representations r [items, 2 (D + 1)]: the ID rows [items, dim] and the output
        weights over f~ [items, D + 1] of each item's scorer. LWA: the cold row, w = G r."""
        return self.start().expand(r.shape[0], -1), self.nets["weights"](r)

    def features(self, x: Tensor) -> Tensor:
        """f~ of each rating's user [..., D + 1] (frozen base embeddings and a constant 1)."""
        f = user_features(self.model.encoder, x)
        return torch.cat([f, torch.ones_like(f[..., :1])], -1)

    def predict_items(self, x: Tensor, rows: Tensor, w: Tensor) -> Tensor:
        """Predictions [items, n] of item tasks x [items, n, F] with ID rows rows [items, dim] in place of the
        table's and the adapted output term w . f~(u) added."""
        return self.item_outputs(x, rows) + (self.features(x) * w.unsqueeze(1)).sum(-1)

    def item_scorers(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """Each item task's scorer (ID rows, output weights) adapted from its support ratings."""
        f = user_features(self.model.encoder, batch.support_x)
        return self.adapt(class_means(f, batch.support_y, batch.support_mask, self.liked()))

    def meta_loss(self, batch: TaskBatch) -> Tensor:
        """The mean over item tasks of the query's squared error of the scorer adapted on the support."""
        rows, w = self.item_scorers(batch)
        pred = self.predict_items(batch.query_x, rows, w)
        return masked_task_loss(pred, batch.query_y, batch.query_mask, self.kind).mean()

    # ---- evaluation -----------------------------------------------------------------------------------
    def cold_rows(self, x: Tensor) -> Tensor:
        return self.adapt(x.new_zeros(x.shape[0], 2 * (self.widths["user"] + 1), dtype=self.start().dtype))[0]

    def warm_rows(self, batch: TaskBatch) -> Tensor:
        return self.item_scorers(batch)[0]

    def enter_state(self, state: str) -> None:
        """Each new item's scorer from the ratings `state` shows of it: its ID row (cold_table) and its
        output weights (out_w, zero for an item with none shown and for every existing item)."""
        self.warmed, self.out_w = None, None
        if self.source is None:
            return
        tasks = visible_item_tasks(self.source, state, ~self.known)
        if tasks is None:
            return
        ids, batch = tasks
        with torch.no_grad():
            rows, w = self.item_scorers(batch)
            self.warmed = (ids, rows)
            self.out_w = w.new_zeros(len(self.known), w.shape[1]).index_copy(0, ids, w)

    def adapt_trace(self, batch: TaskBatch, steps: int, at: list[int] | None = None) -> list[Tensor]:
        preds = super().adapt_trace(batch, steps, at)
        if self.out_w is None:
            return preds
        with torch.no_grad():
            x = batch.query_x
            extra = (self.features(x) * self.out_w[x[..., self.item_col]]).sum(-1)
        return [p + extra.to(p) for p in preds]


class NLBA(LWA):
    Config = NLBAConfig

    def build_nets(self, cfg, dim: int) -> nn.Module:
        d = self.widths["user"] + 1
        # hidden: the item's ID slot, V1 R1 + V0 R0 (MeLU's first layer turns it into a hidden bias);
        # output: the scalar output bias v1 . R1 + v0 . R0
        return nn.ModuleDict({"hidden": zero_linear(2 * d, dim), "output": zero_linear(2 * d, 1)})

    def adapt(self, r: Tensor) -> tuple[Tensor, Tensor]:
        """NLBA: the cold row plus V r (the hidden layer's adapted bias), and output weights that only
        read f~'s constant: the adapted output bias v . r."""
        rows = self.start() + self.nets["hidden"](r)
        d = r.shape[1] // 2
        w = torch.cat([r.new_zeros(r.shape[0], d - 1), self.nets["output"](r)], -1)
        return rows, w
