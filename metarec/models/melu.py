"""MeLU: one embedding per categorical field, mean-pooled multi-hot fields, an MLP that predicts the rating."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from metarec.engine.forms import FieldsForm, MLPForm
from metarec.models.base import Model
from metarec.models.prompt_mlp import PromptMLP


class FieldEncoder(nn.Module):
    """x [..., fields + flags (+ 1)] (long) -> concatenated field embeddings [..., (fields + blocks) * dim
    (+ factor width)]. Each multi-hot block (MovieLens: genres, one block) mean-pools its own rows of one
    shared table. With a factor table (data.item_factors) the last column of x is each rating's row in
    it, and that row (the item's collaborative factors, fixed) is joined at the end.

    sides: which fields and blocks (by name) are the user's and which the item's content (not its id,
    not the item context), as the data source says (TaskSource.model_spec: "sides"); a spec without
    them (a checkpoint from before they were written) reads MovieLens' user fields."""

    def __init__(self, fields: list[tuple[str, int]], multi_hot: list, dim: int, factors: Tensor | None = None,
                 sides: dict[str, list[str]] | None = None):
        super().__init__()
        self.field_names = [name for name, _ in fields]
        self.embeddings = nn.ModuleDict({name: nn.Embedding(size, dim) for name, size in fields})
        blocks = multi_blocks(multi_hot)
        self.blocks = [(name, sum(w for _, w in blocks[:k]), width) for k, (name, width) in enumerate(blocks)]
        self.multi_width = sum(width for _, width in blocks)
        # one weight matrix pooled by the multi-hot flags; no block (data=atomic without *_seq features): none
        self.multi = nn.Embedding(self.multi_width, dim) if blocks else None
        self.factors: Tensor | None
        self.register_buffer("factors", None if factors is None else torch.as_tensor(factors, dtype=torch.float32).clone())
        self.factor_dim = 0 if factors is None else self.factors.shape[1]
        self.out_dim = (len(fields) + len(blocks)) * dim + self.factor_dim
        self.dim = dim
        self.sides = {k: list(v) for k, v in (sides or legacy_sides(self.field_names, blocks)).items()}

    @classmethod
    def from_spec(cls, spec: dict, dim: int) -> "FieldEncoder":
        return cls([tuple(f) for f in spec["fields"]], spec["multi_hot"], dim, spec.get("factors"), spec.get("sides"))

    def pooled(self, x: Tensor, start: int, width: int) -> Tensor:
        """The mean of a multi-hot block's rows over each rating's flags [..., dim]."""
        flags = x[..., len(self.field_names) + start:len(self.field_names) + start + width].to(self.multi.weight.dtype)
        rows = self.multi.weight[start:start + width] if len(self.blocks) > 1 else self.multi.weight
        return flags @ rows / flags.sum(-1, keepdim=True).clamp(min=1.0)

    def require(self, side: str, who: str) -> None:
        """Refuse, in one line that begins with `who` (what reads the side, and how), data that gives
        `side` ("user" or "item") no field."""
        if not self.sides[side]:
            raise ValueError(f"{who}, and this data gives the model none (no NAME.{side} file, or "
                             f"data.{side}_features empty): it does not apply here")

    def side_columns(self, side: str) -> list[int]:
        """The columns of forward()'s output that hold `side`'s features: each field's embedding in field
        order, then each multi-hot block's mean (MovieLens' user fields: the first 4 dim)."""
        order = [*self.field_names, *(name for name, *_ in self.blocks)]
        return [k * self.dim + j for k, name in enumerate(order) if name in self.sides[side] for j in range(self.dim)]

    def side_width(self, side: str) -> int:
        """The width of `side`'s features ("user" or "item")."""
        return len(self.sides[side]) * self.dim

    def side(self, x: Tensor, side: str) -> Tensor:
        """`side`'s features of each rating [..., side_width]: its fields' embeddings and pooled blocks,
        in the data's order (MovieLens' user: gender, age, occupation, zip; item: year, genres)."""
        where = {name: start_width for name, *start_width in self.blocks}
        parts = [self.embeddings[name](x[..., self.field_names.index(name)]) if name not in where
                 else self.pooled(x, *where[name]) for name in self.sides[side]]
        return torch.cat(parts, -1) if parts else x.new_zeros(*x.shape[:-1], 0, dtype=torch.float32)

    def factor_features(self, x: Tensor) -> Tensor | None:
        """The factor-table row of every rating [..., factor width], or None without a table."""
        return None if self.factors is None else self.factors[x[..., -1]]

    def forward(self, x: Tensor) -> Tensor:
        parts = [self.embeddings[name](x[..., i]) for i, name in enumerate(self.field_names)]
        parts += [self.pooled(x, start, width) for _, start, width in self.blocks]
        q = self.factor_features(x)
        return torch.cat(parts + ([] if q is None else [q.to(parts[-1].dtype)]), dim=-1)


LEGACY_USER = ("gender", "age", "occupation", "zip")  # MovieLens' user fields: what specs without sides had
NOT_CONTENT = ("item", "item_bias", "item_count")  # the item id and the item context: not an item's content


def legacy_sides(field_names: list[str], blocks: list[tuple[str, int]]) -> dict[str, list[str]]:
    """The sides of a spec written before specs said them (MovieLens' user fields, the rest the item's)."""
    user = [n for n in field_names if n in LEGACY_USER]
    item = [n for n in field_names if n not in LEGACY_USER + NOT_CONTENT] + [n for n, _ in blocks]
    return {"user": user, "item": item}


def multi_blocks(multi_hot: list) -> list[tuple[str, int]]:
    """A spec's multi_hot: one [name, width] pair (how a data set with one multi-hot field writes it:
    MovieLens' genres) or a list of them, one per multi-hot field (possibly none)."""
    if len(multi_hot) == 2 and isinstance(multi_hot[0], str):
        return [(multi_hot[0], int(multi_hot[1]))]
    return [(str(name), int(width)) for name, width in multi_hot]


class MeLU(Model):
    """Rating predictor; spec comes from the rating task source (field sizes, multi-hot blocks, rating mean)."""

    data_kinds = ("rating",)  # what metarec/config/fit.py checks a config against: MovieLens-style fields
    offers = ("prompt", "last_layer", "fields")

    def __init__(self, spec: dict, embedding_dim: int = 32, hidden: list[int] = (64, 64),
                 prompt_len: int = 0, prompt_dim: int = 0):
        super().__init__()
        self.encoder = FieldEncoder.from_spec(spec, embedding_dim)
        self.head = PromptMLP(self.encoder.out_dim, list(hidden), spec["offset"], prompt_len, prompt_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))

    @classmethod
    def from_config(cls, spec: dict, cfg, prompt_len: int = 0, prompt_dim: int = 0) -> "MeLU":
        return cls(spec, cfg.embedding_dim, list(cfg.hidden), prompt_len, prompt_dim)

    def param_groups(self) -> dict[str, list[str]]:
        """Named sets of parameters an algorithm may adapt per user. Item ids are never in one: a user
        rates an item once, so a support item's row can never reach a query prediction."""
        names = [n for n, _ in self.named_parameters()]
        mlp = [n for n in names if n.startswith("head.net.")]
        groups = {"mlp": mlp, "last": mlp[-2:],  # last: ANIL, a per-user linear model on learned features
                  "all": [n for n in names if n != "head.prompt" and n != "encoder.embeddings.item.weight"]}
        if self.head.prompt is not None:
            groups["prompt"] = ["head.prompt"]
        return groups

    def fast_form(self, whole: bool) -> MLPForm | FieldsForm | None:
        """The engine's fast path: the head, or (whole=True) the whole model, which more multi-hot blocks
        than one (data=atomic) leave unwritten."""
        if not whole:
            return self.head.form()
        if len(self.encoder.blocks) > 1:
            return None
        enc = self.encoder
        return FieldsForm(tuple(f"encoder.embeddings.{name}.weight" for name in enc.field_names),
                          "encoder.multi.weight" if enc.blocks else None, self.head.form(),
                          "encoder.factors" if enc.factors is not None else None)

    # what algo=ridge solves for: the last layer on the last hidden layer (and the item factors)
    def last_hidden(self, x: Tensor) -> Tensor:
        return self.head.hidden(self.encoder(x))

    def last_layer(self) -> nn.Linear:
        return self.head.net[-1]

    def output_offset(self) -> Tensor:
        return self.head.offset

    @property
    def factor_dim(self) -> int:
        return self.encoder.factor_dim

    def factor_features(self, x: Tensor) -> Tensor | None:
        return self.encoder.factor_features(x)
