"""MetaEmb (Pan et al., SIGIR 2019, "Warm Up Cold-start Advertisements: Improving CTR Predictions via
Learning to Learn ID Embeddings"): a generator from a new item's features to its ID embedding,
meta-trained on existing items treated as cold, so that the base model predicts well with the
generated embedding (cold-start loss) and after one gradient step of that embedding on a few ratings
(warm-up loss).

Two phases in one run (algo.pretrain_steps, then the rest of trainer.max_steps):
1. the base model (MeLU with data.item_ids=true: an ID embedding per item) is trained as algo=pretrain
   trains it: supervised, on the meta-train users' episodes;
2. the base is frozen and the generator g(item features) -> ID embedding is meta-trained on item tasks
   (metarec/algos/item_tasks.py: an existing item, its training ratings drawn as two mini-batches a, b):
       L = alpha * L_a(g) + (1 - alpha) * L_b(g - warm_lr * dL_a/dg),
   averaged over the items of the meta-batch, all items in one padded batch (no loop over items).
At evaluation every item without a training rating (the new items of item_cold, user_item_cold,
val_new) reads its generated embedding in the base model's table; the rest is algo=pretrain's
evaluation (the decision layers fine-tuned on each user's support set). Inductive by default: a new
item's embedding comes from its own features only, never from another user's rating (with
data.item_stats=false, as in the presets; the item context columns would read them, bucketed).
Transductive with algo.warm_up=true: before a state is scored, each new item's generated embedding
takes the warm-up step it was meta-trained for, on the ratings that state shows of it (the other
users' support sets: TaskSource.visible, as the bias_transductive floor reads them; never a query).

Where ours departs from the paper and the authors' code (and RecBole-MetaRec's MetaEmb), and why:
- explicit ratings and a squared error (MeLU's protocol scores MAE on 1-5 ratings), not CTR and log-loss;
- the base model is MeLU (field embeddings, MLP 64-64-1), the one every method here shares, not the
  paper's ad-CTR models; its users are MeLU's tasks, fine-tuned per user at test as algo=pretrain is;
- the generator reads the item's only features here, its release-year bucket and genres, through the
  base model's own (frozen) embeddings, as the paper's generator reads the ad's feature embeddings;
  a two-layer MLP (RecBole's) with a zero output layer, so a new item starts at a zero ID embedding;
- item tasks: each mini-batch is min(K, n/2) of the item's training ratings (the paper's K=20 ads'
  samples per mini-batch: here algo.item_shots), items with at least two ratings;
- model selection on val_new (validation users on new items: what the generator is for), not val;
- the paper's test warm-up runs on the ad's first batches as they arrive; here a new item's ratings
  at test time are the other users' support sets of the same state (algo.warm_up, transductive), all
  of them in the one step the generator was trained for (a mean over them, as over a mini-batch).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metarec.algos.cold_items import ITEM, ColdItemConfig, ColdItemLearner, item_features
from metarec.checks import rule
from metarec.tasks import TaskBatch

__all__ = ["ITEM", "EmbeddingGenerator", "MetaEmb", "MetaEmbConfig"]


@dataclass
class MetaEmbConfig(ColdItemConfig):
    """algo=metaemb (conf/algo/metaemb.yaml): algo=pretrain's keys (phase 1 and evaluation), the item
    tasks' (metarec/algos/cold_items.py) and the generator's."""

    name: str = "metaemb"
    gen_lr: float = rule(0.001, "> 0")  # Adam lr of the generator (phase 2)
    gen_hidden: int = rule(32, ">= 0")  # the generator's hidden width (0: one linear layer)
    alpha: float = rule(0.1, "in [0, 1]")  # weight of the cold-start loss; 1 - alpha: the warm-up loss
    warm_lr: float = rule(0.1, "> 0")  # a: the step size of the warm-up step on the generated embedding
    warm_up: bool = False  # transductive: at evaluation, one warm-up step of each new item's embedding on
    # the ratings its state shows of it (other users' support sets), as the warm-up loss trained it


class EmbeddingGenerator(nn.Module):
    """Item features [..., width] (the base model's embeddings of the item's content, frozen; MovieLens:
    the year bucket and the pooled genres) -> an ID embedding [..., dim]. Starts at zero (its output
    layer is zero)."""

    def __init__(self, width: int, dim: int, hidden: int):
        super().__init__()
        layers = [nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, dim)] if hidden else [nn.Linear(width, dim)]
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


class MetaEmb(ColdItemLearner):
    Config = MetaEmbConfig
    reads = ("item",)  # the generator reads the item's content

    def __init__(self, cfg, model: nn.Module, kind: str, compile: bool = False, fast_paths: bool = True):
        self.warm_up = bool(cfg.warm_up)
        super().__init__(cfg, model, kind, compile=compile, fast_paths=fast_paths)

    def build_nets(self, cfg, dim: int) -> nn.Module:
        return EmbeddingGenerator(self.widths["item"], dim, cfg.gen_hidden)

    def nets_lr(self) -> float:
        return self.cfg.gen_lr

    @property
    def generator(self) -> EmbeddingGenerator:
        return self.nets

    def generate(self, x: Tensor) -> Tensor:
        """The generated ID embedding of each rating's item: [..., dim]."""
        return self.generator(item_features(self.model.encoder, x))

    def warmed_up(self, batch: TaskBatch, emb: Tensor, create_graph: bool) -> Tensor:
        """emb - warm_lr * the gradient of each item's cold-start loss on its support ratings."""
        with torch.enable_grad():
            cold = self.item_loss(batch.support_x, batch.support_y, batch.support_mask, emb)
            (grad,) = torch.autograd.grad(cold.sum(), emb, create_graph=create_graph)  # each item's own
        return emb - self.cfg.warm_lr * grad

    def meta_loss(self, batch: TaskBatch) -> Tensor:
        """alpha * cold-start loss on mini-batch a + (1 - alpha) * warm-up loss on b after one step of
        the embedding on a; batch: item tasks (support = a, query = b)."""
        emb = self.generate(batch.support_x[:, 0])  # [items, dim]: an item's features are its ratings'
        cold = self.item_loss(batch.support_x, batch.support_y, batch.support_mask, emb)
        (grad,) = torch.autograd.grad(cold.sum(), emb, create_graph=True)  # each item's own: tasks are independent
        warm = self.item_loss(batch.query_x, batch.query_y, batch.query_mask, emb - self.cfg.warm_lr * grad)
        return (self.cfg.alpha * cold + (1 - self.cfg.alpha) * warm).mean()

    def cold_rows(self, x: Tensor) -> Tensor:
        return self.generate(x)

    def warm_rows(self, batch: TaskBatch) -> Tensor:
        """algo.warm_up: the generated embedding after one warm-up step on the item's visible ratings."""
        return self.warmed_up(batch, self.generate(batch.support_x[:, 0]).detach().requires_grad_(True), False)
