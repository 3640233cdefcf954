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

from metarec.algos.item_tasks import ItemTasks, visible_item_tasks
from metarec.algos.pretrain import Pretrain, PretrainConfig
from metarec.engine import masked_task_loss
from metarec.errors import UserError
from metarec.tasks import TaskBatch

ITEM = "encoder.embeddings.item.weight"


@dataclass
class MetaEmbConfig(PretrainConfig):
    """algo=metaemb (conf/algo/metaemb.yaml): algo=pretrain's keys (phase 1 and evaluation) and the generator's."""

    name: str = "metaemb"
    pretrain_steps: int = 1000  # phase 1: supervised steps of the base model; the generator trains after
    gen_lr: float = 0.001  # Adam lr of the generator (phase 2)
    gen_hidden: int = 32  # the generator's hidden width (0: one linear layer)
    alpha: float = 0.1  # weight of the cold-start loss; 1 - alpha: the warm-up loss
    warm_lr: float = 0.1  # a: the step size of the warm-up step on the generated embedding
    item_shots: int = 10  # K: ratings per mini-batch of an item task
    items_per_step: int = 64  # items per generator meta-batch
    warm_up: bool = False  # transductive: at evaluation, one warm-up step of each new item's embedding on
    # the ratings its state shows of it (other users' support sets), as the warm-up loss trained it


class EmbeddingGenerator(nn.Module):
    """Item features (the base model's year-bucket embedding and pooled genre embeddings, frozen) ->
    an ID embedding [..., dim]. Starts at zero (its output layer is zero)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        layers = [nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, dim)] if hidden else [nn.Linear(2 * dim, dim)]
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


def item_features(encoder: nn.Module, x: Tensor) -> Tensor:
    """[..., 2 * dim]: the year bucket's embedding and the mean of the genres' embeddings of each
    rating's item (x: the model input), detached: the base model is frozen while the generator learns."""
    n_fields, multi = len(encoder.field_names), encoder.multi.weight
    year = encoder.embeddings["year"](x[..., encoder.field_names.index("year")])
    flags = x[..., n_fields:n_fields + multi.shape[0]].to(multi.dtype)
    pooled = flags @ multi / flags.sum(-1, keepdim=True).clamp(min=1.0)
    return torch.cat([year, pooled], -1).detach()


class MetaEmb(Pretrain):
    Config = MetaEmbConfig
    select_state = "val_new"  # the trainer keeps the checkpoint best on validation users' new items

    def __init__(self, cfg, model: nn.Module, kind: str, compile: bool = False, fast_paths: bool = True):
        enc = getattr(model, "encoder", None)
        if kind != "rating" or enc is None or "item" not in getattr(enc, "field_names", []):
            raise ValueError("algo=metaemb generates item ID embeddings: it needs model=melu on MovieLens "
                             "with data.item_ids=true")
        if not 0.0 <= cfg.alpha <= 1.0 or cfg.pretrain_steps < 0 or cfg.items_per_step < 1 or cfg.gen_hidden < 0:
            raise ValueError(f"algo.alpha={cfg.alpha} must be in [0, 1], algo.pretrain_steps={cfg.pretrain_steps} >= 0, "
                             f"algo.items_per_step={cfg.items_per_step} >= 1 and algo.gen_hidden={cfg.gen_hidden} >= 0")
        weight = model.get_parameter(ITEM)
        self.dim, self.item_col = weight.shape[1], enc.field_names.index("item")
        self.generator = EmbeddingGenerator(self.dim, cfg.gen_hidden).to(weight)
        self.known = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)  # attach() marks new items
        self.items: ItemTasks | None = None
        self.sampler = torch.Generator().manual_seed(torch.initial_seed() + 1)  # the item episodes' own stream
        self.steps_done, self._table = 0, None
        self.source, self.warmed = None, None  # warm_up: the state's warmed rows (ids, embeddings)
        super().__init__(cfg, model, kind, compile=compile, fast_paths=fast_paths)
        self.optimizer = torch.optim.Adam(
            [{"params": list(model.parameters())},
             {"params": list(self.generator.parameters()), "lr": cfg.gen_lr, "weight_decay": 0.0}],
            lr=cfg.meta_lr, weight_decay=cfg.weight_decay)

    def attach(self, source) -> None:
        """The task source's training ratings: the item tasks of phase 2, and which ID rows were
        trained (an item with no training rating is new: it reads its generated embedding)."""
        if not hasattr(source, "train_ratings"):
            raise UserError("algo=metaemb needs item-centric tasks from a MovieLens source (data=movielens)")
        self.items, self.source = ItemTasks(source, self.cfg.item_shots), source
        trained = source.rating_item[torch.as_tensor(source.train_ratings, device=source.y.device)] + 1
        self.known = torch.zeros_like(self.known)
        self.known[0] = True  # UNK
        self.known[trained.to(self.known.device)] = True

    def meta_parameters(self) -> list[Tensor]:
        return super().meta_parameters() + list(self.generator.parameters())

    # ---- the generator's meta-loss -----------------------------------------------------------------
    def generate(self, x: Tensor) -> Tensor:
        """The generated ID embedding of each rating's item: [..., dim]."""
        return self.generator(item_features(self.model.encoder, x))

    def item_loss(self, x: Tensor, y: Tensor, mask: Tensor, emb: Tensor) -> Tensor:
        """Each item task's mean squared error [items] with its ID embedding emb [items, dim] in place
        of the table's row (x [items, n, F]: every rating is of the task's item)."""
        h = self.model.encoder(x)
        lo = self.item_col * self.dim
        h = torch.cat([h[..., :lo], emb.unsqueeze(1).expand(-1, h.shape[1], -1), h[..., lo + self.dim:]], -1)
        return masked_task_loss(self.model.head(h), y, mask, self.kind)

    def meta_loss(self, batch: TaskBatch) -> Tensor:
        """alpha * cold-start loss on mini-batch a + (1 - alpha) * warm-up loss on b after one step of
        the embedding on a; batch: item tasks (support = a, query = b)."""
        emb = self.generate(batch.support_x[:, 0])  # [items, dim]: an item's features are its ratings'
        cold = self.item_loss(batch.support_x, batch.support_y, batch.support_mask, emb)
        (grad,) = torch.autograd.grad(cold.sum(), emb, create_graph=True)  # each item's own: tasks are independent
        warm = self.item_loss(batch.query_x, batch.query_y, batch.query_mask, emb - self.cfg.warm_lr * grad)
        return (self.cfg.alpha * cold + (1 - self.cfg.alpha) * warm).mean()

    def step(self, batch: TaskBatch) -> dict[str, float]:
        """Phase 1: algo=pretrain's step on the users' episode `batch`; phase 2: a generator step on
        fresh item tasks (the users' batch is not read)."""
        self.steps_done += 1
        if self.steps_done <= self.cfg.pretrain_steps:
            return super().step(batch)
        if self.items is None:
            raise UserError("algo=metaemb trains its generator on item tasks from a MovieLens source (data=movielens)")
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.meta_loss(self.items.sample(self.cfg.items_per_step, self.sampler))
        params = list(self.generator.parameters())
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        self.apply_update()
        return {"loss": loss.item()}

    # ---- evaluation: new items read their generated rows ---------------------------------------------
    def cold_table(self, batch: TaskBatch) -> Tensor:
        """The ID table with every new item of the batch at its generated embedding (detached)."""
        x = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
        ids = x[:, self.item_col]
        cold = ~self.known[ids]
        table = self.model.get_parameter(ITEM).detach().clone()
        with torch.no_grad():
            table[ids[cold]] = self.generate(x[cold]).to(table)
            if self.warmed is not None:  # warm_up: the rows the state's visible ratings warmed
                table[self.warmed[0]] = self.warmed[1].to(table)
        return table

    def enter_state(self, state: str) -> None:
        """Evaluation is about to score `state` (metarec.evaluate): with algo.warm_up, each new item's
        generated embedding takes one step of warm_lr on the ratings the state shows of it."""
        self.warmed = None
        if not self.cfg.warm_up or self.source is None:
            return
        tasks = visible_item_tasks(self.source, state, ~self.known)
        if tasks is None:
            return
        ids, batch = tasks
        emb = self.generate(batch.support_x[:, 0]).detach().requires_grad_(True)
        with torch.enable_grad():
            loss = self.item_loss(batch.support_x, batch.support_y, batch.support_mask, emb).sum()
            (grad,) = torch.autograd.grad(loss, emb)
        self.warmed = (ids, (emb - self.cfg.warm_lr * grad).detach())

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
        return {**super().state_dict(), "generator": self.generator.state_dict(), "steps_done": self.steps_done,
                "sampler": self.sampler.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generator.load_state_dict(state["generator"])
        self.steps_done = state["steps_done"]
        self.sampler.set_state(state["sampler"])
