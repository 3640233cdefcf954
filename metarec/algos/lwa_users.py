"""LWA and NLBA as Vartak et al. define them (NeurIPS 2017, "A Meta-Learning Perspective on Cold-Start
Recommendations for Items"): a task is a user, and a new item is scored from its own content embedding
by a scorer adapted, in one forward pass, from the user's liked and disliked support items.

With F(t) an item's content embedding (a learned network over its content fields: MovieLens' year and
genres) and, for a task (a user) with support items t and ratings y,
    R1 = the mean of F(t) over the liked support items (y >= algo.like_threshold),  R0 = over the others,
the query items are scored as
    LWA:  mu + b + F(t) . w,        w = G1 R1 + G0 R0                        (linear weight adaptation)
    NLBA: mu + b + v . h_L + v1 . R1 + v0 . R0,
          h_l = relu(W_l h_{l-1} + V1_l R1 + V0_l R0 + c_l),  h_0 = F(t)          (non-linear bias adaptation)
G, V, v, W and the content network are meta-learned end to end over user tasks (Adam, algo.meta_lr) on
the query's squared error; a meta-batch of tasks is one padded batch (no loop over tasks).

Inputs: the task's own support items and their ratings, and each query item's content: no user
features, no item ids, no item context (data.item_stats columns are ignored), nothing from another
task. So both are inductive on every state, a new item included (recorded: TaskSource.input_class).

Where ours departs from the paper and RecBole-MetaRec (nuster1128/RecBole-MetaRec, model/LWA, model/NLBA):
- explicit ratings and a squared error (MeLU's protocol, MAE), not engagement and a log-loss: the
  classes are the ratings at or above algo.like_threshold (liked) and below it (null, the default: the
  data's liked rating, 4 on 1-5 and the same place on any scale, metarec.tasks.liked_rating); the prediction adds the
  training mean mu (the offset every metarec model predicts around) and has no sigmoid;
- F is a learned MLP over MeLU's field embeddings of the item's content (the data's item fields; MovieLens:
  year, pooled genres), where the
  paper's F is a pretrained content embedding of a Tweet; RecBole's F is the same kind of MLP;
- class means, as the paper writes them, by default (an empty class has a zero mean); algo.pooling=share
  divides each class's sum by the support size instead (the mean times the class's share, so the share of
  liked items, a user's leniency, reaches the scorer) and algo.pooling=sum is RecBole's sum;
- NLBA adapts the biases of every hidden layer (algo.hidden); RecBole's has one hidden layer;
- model selection on val_new (validation users on new items: the paper's target), never a test state.
Their item-task transpose is algo=lwa_items / nlba_items (metarec/algos/lwa.py): a different,
transductive method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from metarec.algos.base import AlgoConfig, LikedClass, MetaLearner
from metarec.checks import parse, rule
from metarec.engine import masked_task_loss
from metarec.tasks import TaskBatch


def widths(v) -> str | None:
    """The rule of algo.hidden: one or more layer widths."""
    v = list(v)
    return None if v and parse("each >= 1")(v) is None else "must be one or more widths >= 1"


@dataclass
class LWAConfig(AlgoConfig):
    """algo=lwa (conf/algo/lwa.yaml)."""

    name: str = "lwa"
    inner_steps: int = rule(0, "in [0, 0]")  # no gradient steps: adaptation is the class means' forward pass
    # a rating at or above it is in the liked class (R1), below it in R0; null: 4 on 1-5, the same place on any scale
    like_threshold: Optional[float] = rule(None, "any")
    pooling: str = rule("mean", "one of mean, share, sum")  # R_c: the class mean (the paper), its sum / support size, its sum (RecBole)
    content_hidden: int = rule(64, ">= 1")  # the content network F: field embeddings -> hidden -> content_dim
    content_dim: int = rule(32, ">= 1")


@dataclass
class NLBAConfig(LWAConfig):
    """algo=nlba (conf/algo/nlba.yaml): as algo=lwa, and the widths of the network whose biases adapt."""

    name: str = "nlba"
    hidden: list[int] = rule([64], widths)  # the widths of the layers whose biases adapt


def class_means(f: Tensor, y: Tensor, mask: Tensor, threshold: float, pooling: str = "mean") -> tuple[Tensor, Tensor]:
    """R1, R0 [tasks, D]: the support items' embeddings f [tasks, S, D] pooled over the liked (y >= threshold)
    and the other ratings of each task (mask [tasks, S]): their mean (zero for an empty class), their sum
    divided by the task's support size ("share": the mean times the class's share, so the user's share of
    liked items reaches the scorer), or their sum."""
    liked = (y >= threshold).to(f.dtype) * mask
    other = mask - liked
    sums = [(f * c.unsqueeze(-1)).sum(1) for c in (liked, other)]
    if pooling == "sum":
        return sums[0], sums[1]
    if pooling == "share":
        n = mask.sum(1, keepdim=True).clamp(min=1.0)
        return sums[0] / n, sums[1] / n
    return sums[0] / liked.sum(1, keepdim=True).clamp(min=1.0), sums[1] / other.sum(1, keepdim=True).clamp(min=1.0)


class LWA(LikedClass, MetaLearner):
    Config = LWAConfig
    data_kinds = ("rating",)
    one_pass = True  # evaluation: the scorer comes from one forward pass over the support set
    select_state = "val_new"
    reads = ("item",)  # F(t): the item's content

    @classmethod
    def model_needs(cls, cfg) -> tuple[str, ...]:
        return ("fields",)  # MeLU's field embeddings: the content network reads the item's

    def __init__(self, cfg, model: nn.Module, kind: str, compile: bool = False, fast_paths: bool = True):
        if kind != "rating" or "fields" not in model.offers:
            raise ValueError(f"algo={cfg.name} scores items from their content fields: it needs model=melu on ratings")
        enc = model.encoder
        enc.require("item", f"algo={cfg.name} scores items from their content fields")
        width = enc.side_width("item")
        self.content = nn.Sequential(nn.Linear(width, cfg.content_hidden), nn.ReLU(),
                                     nn.Linear(cfg.content_hidden, cfg.content_dim)).to(model.output_offset())
        self.scorer = self.build_scorer(cfg).to(model.output_offset())
        super().__init__(cfg, model, kind)

    def build_scorer(self, cfg) -> nn.Module:
        d = cfg.content_dim
        return nn.ModuleDict({"g1": nn.Linear(d, d, bias=False), "g0": nn.Linear(d, d, bias=False),
                              "b": nn.Linear(1, 1, bias=False)})  # b: the global bias, as a 1 -> 1 map

    def meta_parameters(self) -> list[Tensor]:
        enc = self.model.encoder
        names = [n for n in enc.sides["item"] if n in enc.embeddings]
        blocks = len(names) < len(enc.sides["item"])  # the content has multi-hot blocks: their shared table
        tables = [enc.embeddings[n].weight for n in names] + ([enc.multi.weight] if blocks else [])
        return tables + list(self.content.parameters()) + list(self.scorer.parameters())

    def embed(self, x: Tensor) -> Tensor:
        """F(t) of each rating's item [..., content_dim]: the content network over its content fields' embeddings."""
        return self.content(self.model.encoder.side(x, "item"))

    def score(self, fq: Tensor, r1: Tensor, r0: Tensor) -> Tensor:
        """LWA: query items' embeddings fq [tasks, Q, D] -> ratings [tasks, Q] by w = G1 R1 + G0 R0."""
        w = self.scorer["g1"](r1) + self.scorer["g0"](r0)  # [tasks, D]
        return (fq * w.unsqueeze(1)).sum(-1) + self.scorer["b"].weight[0, 0]

    def predict(self, batch: TaskBatch) -> Tensor:
        r1, r0 = class_means(self.embed(batch.support_x), batch.support_y, batch.support_mask, self.liked(),
                             self.cfg.pooling)
        return self.model.output_offset() + self.score(self.embed(batch.query_x), r1, r0)

    def meta_loss(self, batch: TaskBatch) -> Tensor:
        return masked_task_loss(self.predict(batch), batch.query_y, batch.query_mask, self.kind).mean()

    def adapt_trace(self, batch: TaskBatch, steps: int, at: list[int] | None = None) -> list[Tensor]:
        """The forward pass's predictions at every requested step (there are no steps)."""
        with torch.no_grad():
            pred = self.predict(batch)
        return [pred for k in range(steps + 1) if at is None or k in at]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "content": self.content.state_dict(), "scorer": self.scorer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.content.load_state_dict(state["content"])
        self.scorer.load_state_dict(state["scorer"])


class NLBA(LWA):
    Config = NLBAConfig

    def build_scorer(self, cfg) -> nn.Module:
        d, widths = cfg.content_dim, [cfg.content_dim, *cfg.hidden]
        layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))  # W_l and c_l
        v1 = nn.ModuleList(nn.Linear(d, b, bias=False) for b in widths[1:])  # V1_l
        v0 = nn.ModuleList(nn.Linear(d, b, bias=False) for b in widths[1:])  # V0_l
        return nn.ModuleDict({"layers": layers, "v1": v1, "v0": v0, "out": nn.Linear(widths[-1], 1),
                              "out1": nn.Linear(d, 1, bias=False), "out0": nn.Linear(d, 1, bias=False)})

    def score(self, fq: Tensor, r1: Tensor, r0: Tensor) -> Tensor:
        """NLBA: every hidden layer's bias and the output bias adapted from R1, R0 [tasks, D]."""
        s, h = self.scorer, fq
        for layer, v1, v0 in zip(s["layers"], s["v1"], s["v0"]):
            h = torch.relu(layer(h) + (v1(r1) + v0(r0)).unsqueeze(1))  # [tasks, Q, width]
        return s["out"](h).squeeze(-1) + (s["out1"](r1) + s["out0"](r0))  # [tasks, Q] + [tasks, 1]
