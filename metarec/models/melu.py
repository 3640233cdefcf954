"""MeLU: one embedding per categorical field, mean-pooled multi-hot fields, an MLP that predicts the rating."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class FieldEncoder(nn.Module):
    """x [..., fields + multi_hot (+ 1)] (long) -> concatenated field embeddings [..., (fields + 1) * dim
    (+ factor width)]. With a factor table (data.item_factors) the last column of x is each rating's
    row in it, and that row (the item's collaborative factors, fixed) is joined at the end."""

    def __init__(self, fields: list[tuple[str, int]], multi_hot: tuple[str, int], dim: int,
                 factors: Tensor | None = None):
        super().__init__()
        self.field_names = [name for name, _ in fields]
        self.embeddings = nn.ModuleDict({name: nn.Embedding(size, dim) for name, size in fields})
        self.multi_name, multi_size = multi_hot
        self.multi = nn.Embedding(multi_size, dim)  # a weight matrix pooled by the multi-hot flags
        self.factors: Tensor | None
        self.register_buffer("factors", None if factors is None else torch.as_tensor(factors, dtype=torch.float32).clone())
        self.factor_dim = 0 if factors is None else self.factors.shape[1]
        self.out_dim = (len(fields) + 1) * dim + self.factor_dim

    def factor_features(self, x: Tensor) -> Tensor | None:
        """The factor-table row of every rating [..., factor width], or None without a table."""
        return None if self.factors is None else self.factors[x[..., -1]]

    def forward(self, x: Tensor) -> Tensor:
        n = len(self.field_names)
        parts = [self.embeddings[name](x[..., i]) for i, name in enumerate(self.field_names)]
        flags = x[..., n:x.shape[-1] - (self.factors is not None)].to(self.multi.weight.dtype)  # [..., multi_size]
        pooled = flags @ self.multi.weight / flags.sum(-1, keepdim=True).clamp(min=1.0)
        q = self.factor_features(x)
        return torch.cat(parts + [pooled] + ([] if q is None else [q.to(pooled.dtype)]), dim=-1)


class PromptMLP(nn.Module):
    """The decision layers; optional learnable prompt vectors are joined to every input row."""

    def __init__(self, in_dim: int, hidden: list[int], offset: float, prompt_len: int = 0, prompt_dim: int = 0):
        super().__init__()
        self.prompt = nn.Parameter(0.1 * torch.randn(prompt_len, prompt_dim)) if prompt_len * prompt_dim else None
        widths = [in_dim + prompt_len * prompt_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], 1))
        self.net = nn.Sequential(*layers)
        # Predicting offset + output keeps the meta-learned start on the rating scale, so the
        # inner loop does not spend its steps shifting the scale (DESIGN.md, "Pitfalls").
        self.register_buffer("offset", torch.tensor(float(offset)))

    def forward(self, h: Tensor) -> Tensor:
        if self.prompt is not None:
            prompt = self.prompt.reshape(-1).expand(*h.shape[:-1], -1)
            h = torch.cat([h, prompt], dim=-1)
        return self.offset + self.net(h).squeeze(-1)


class MeLU(nn.Module):
    """Rating predictor; spec comes from the MovieLens task source (field sizes, rating mean)."""

    def __init__(self, spec: dict, embedding_dim: int = 32, hidden: list[int] = (64, 64),
                 prompt_len: int = 0, prompt_dim: int = 0):
        super().__init__()
        self.encoder = FieldEncoder([tuple(f) for f in spec["fields"]], tuple(spec["multi_hot"]), embedding_dim,
                                    spec.get("factors"))
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
