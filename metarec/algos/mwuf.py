"""MWUF (Zhu et al., SIGIR 2021, "Learning to Warm Up Cold Item Embeddings for Cold-start
Recommendation with Meta Scaling and Shifting Networks"): a new item's ID embedding is warmed up as
    e_warm = e_cold * scale(item features) + shift(mean embedding of the users who rated it),
two small meta networks trained on existing items treated as cold, the base model frozen.

Phases (metarec/algos/cold_items.py): the base model (MeLU with data.item_ids=true) is trained as
algo=pretrain trains it; then, per meta-batch of item tasks (an existing item, its training ratings
drawn as mini-batches a and b), the two updates of the paper alternate:
- cold loss: the item's cold ID embedding takes an SGD step (algo.cold_lr) on its ratings in a, from
  the mean of the trained ID rows (the paper's initialisation of a new item's embedding);
- warm loss: the meta networks (Adam, algo.nets_lr) are trained on b with the warmed embedding, the
  shift network reading the mean embedding of a's raters.
All items of a meta-batch in one padded batch, no loop over items. At evaluation a new item's cold
step and its raters come from the ratings its state shows of it (TaskSource.visible: the other
users' support sets, as the bias_transductive floor reads them): MWUF is transductive. A new item
its state shows no rating of keeps the mean row, scaled by its features, shifted by shift(0).

Where ours departs from the paper, the authors' code and RecBole-MetaRec's MWUF, and why:
- explicit ratings and a squared error (MeLU's protocol scores MAE on 1-5 ratings), not CTR/log-loss;
- the base is MeLU, which every method here shares (its users are tasks, fine-tuned per user at test
  as algo=pretrain is); MeLU has no user ID embedding, so "the users' embedding" that the shifting
  network averages is each rater's user-field embeddings (gender, age, occupation, zip);
- the paper keeps updating each cold embedding with the cold loss as new data arrives over many
  iterations; here every item task starts from the same mean row and takes one cold step on the
  ratings seen (mini-batch a in training, the state's visible ratings at test), so training and
  test see the same warm-up;
- the scaling network reads the item's only features here, release-year bucket and genres, through
  the base model's frozen embeddings; it starts at scale 1 and the shifting network at shift 0;
- model selection on val_new (validation users on new items), not val.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metarec.algos.cold_items import ColdItemConfig, ColdItemLearner, item_features, user_features
from metarec.checks import rule
from metarec.tasks import TaskBatch


@dataclass
class MWUFConfig(ColdItemConfig):
    """algo=mwuf (conf/algo/mwuf.yaml): algo=pretrain's keys, the item tasks' and the meta networks'."""

    name: str = "mwuf"
    nets_lr: float = rule(0.001, "> 0")  # Adam lr of the meta scaling and shifting networks (the warm loss)
    cold_lr: float = rule(1.0, "> 0")  # the SGD step of a cold item's ID embedding on its cold loss
    hidden: int = rule(32, ">= 1")  # hidden width of both meta networks


def mlp(n_in: int, hidden: int, n_out: int, bias: float) -> nn.Sequential:
    """Linear-ReLU-Linear whose output starts at `bias` everywhere (zero last weights)."""
    net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))
    nn.init.zeros_(net[-1].weight)
    nn.init.constant_(net[-1].bias, bias)
    return net


class MetaNets(nn.Module):
    """scale: item features [item width] -> [dim] (starts at 1); shift: mean rater embedding [user width]
    -> [dim] (starts at 0). MovieLens' widths: 2 dim (year, genres) and 4 dim (its four user fields)."""

    def __init__(self, widths: dict[str, int], dim: int, hidden: int):
        super().__init__()
        self.scale, self.shift = mlp(widths["item"], hidden, dim, 1.0), mlp(widths["user"], hidden, dim, 0.0)


class MWUF(ColdItemLearner):
    Config = MWUFConfig
    warm_up = True  # the cold step and the shift read the ratings a state shows of its new items
    reads = ("user", "item")

    def build_nets(self, cfg, dim: int) -> nn.Module:
        return MetaNets(self.widths, dim, cfg.hidden)

    def nets_lr(self) -> float:
        return self.cfg.nets_lr

    def warm(self, batch: TaskBatch) -> Tensor:
        """Each item task's warmed embedding [items, dim] from its support ratings (the ratings seen):
        one cold-loss step from the start (a constant for the meta networks), then scaled and shifted."""
        x, mask = batch.support_x, batch.support_mask
        start = self.start().expand(x.shape[0], -1).clone().requires_grad_(True)
        with torch.enable_grad():
            cold = self.item_loss(x, batch.support_y, mask, start)
            (grad,) = torch.autograd.grad(cold.sum(), start)  # each item's own: tasks are independent
        e_cold = (start - self.cfg.cold_lr * grad).detach()
        users = (user_features(self.model.encoder, x) * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return e_cold * self.nets.scale(item_features(self.model.encoder, x[:, 0])) + self.nets.shift(users)

    def meta_loss(self, batch: TaskBatch) -> Tensor:
        """The warm loss on mini-batch b of the embedding warmed up on a; batch: item tasks (support = a, query = b)."""
        return self.item_loss(batch.query_x, batch.query_y, batch.query_mask, self.warm(batch)).mean()

    def cold_rows(self, x: Tensor) -> Tensor:
        feat = item_features(self.model.encoder, x)
        no_raters = feat.new_zeros(feat.shape[0], self.widths["user"])
        return self.start() * self.nets.scale(feat) + self.nets.shift(no_raters)

    def warm_rows(self, batch: TaskBatch) -> Tensor:
        return self.warm(batch)
