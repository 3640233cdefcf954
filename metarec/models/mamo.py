"""MAMO's recommendation model (Dong et al., KDD 2020; dongmanqing/Code-for-MAMO) on MeLU's fields.

The user's profile p_u (its field embeddings joined: gender, age, occupation, zip) and the item's
p_i (the rest: year, item context, pooled genres, ...) each pass a one-layer embedding tower, e_u and
e_i joined pass the preference matrix M_{u,I} (a square linear layer; algo=mamo initialises its
weight per user from the task memory), then an MLP predicts the rating as offset + output.

model.hidden [64, 64] reads: towers of 32 each (64 / 2), the 64 x 64 preference matrix, one hidden
layer of 64, the output. The authors' towers and MLP use leaky ReLU; so does this.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarec.models.melu import FieldEncoder

USER_FIELDS = ("gender", "age", "occupation", "zip")


def batched_linear(h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Each task's own linear layer: h [tasks, n, in], weight [tasks, out, in], bias [tasks, out]."""
    return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))


class MAMONet(nn.Module):
    data_kinds = ("rating",)  # what metarec/fit.py checks a config against: MovieLens' user and item fields
    offers = ("mamo",)
    def __init__(self, spec: dict, embedding_dim: int = 32, hidden: list[int] = (64, 64)):
        super().__init__()
        fields = [tuple(f) for f in spec["fields"]]
        n_user = len(USER_FIELDS)
        if tuple(name for name, _ in fields[:n_user]) != USER_FIELDS:
            raise ValueError(f"model=mamo reads the user's profile from MovieLens' user fields {', '.join(USER_FIELDS)} "
                             f"(the first fields of data=movielens); this data has {', '.join(n for n, _ in fields)}")
        if len(hidden) < 1 or hidden[0] < 2 or hidden[0] % 2:
            raise ValueError(f"model.hidden={list(hidden)}: model=mamo needs an even first width "
                             "(two towers of half of it feed the preference matrix)")
        self.encoder = FieldEncoder(fields, tuple(spec["multi_hot"]), embedding_dim, spec.get("factors"))
        self.user_dim = n_user * embedding_dim  # p_u: the first columns of the encoder's output
        tower = hidden[0] // 2
        self.user = nn.Linear(self.user_dim, tower)
        self.item = nn.Linear(self.encoder.out_dim - self.user_dim, tower)
        self.pref = nn.Linear(2 * tower, 2 * tower)  # M_{u,I}
        layers: list[nn.Module] = []
        widths = [2 * tower, *hidden[1:]]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.LeakyReLU()]
        layers.append(nn.Linear(widths[-1], 1))
        self.net = nn.Sequential(*layers)
        self.offset: Tensor
        self.register_buffer("offset", torch.tensor(float(spec["offset"])))

    @classmethod
    def from_config(cls, spec: dict, cfg, prompt_len: int = 0, prompt_dim: int = 0) -> "MAMONet":
        if prompt_len or prompt_dim:
            raise ValueError("model=mamo has no prompt vectors: use model=melu or model=mlp with algo=prompt")
        return cls(spec, cfg.embedding_dim, list(cfg.hidden))

    def param_groups(self) -> dict[str, list[str]]:
        """local (= mlp, the name other algorithms ask for): what MAMO's local update adapts (towers,
        preference matrix, MLP); the field embeddings stay global only, as MeLU's."""
        names = [n for n, _ in self.named_parameters()]
        local = [n for n in names if not n.startswith("encoder.")]
        return {"local": local, "mlp": local, "all": names}

    def profile(self, h: Tensor) -> Tensor:
        """p_u [..., user_dim] from the encoder's output h."""
        return h[..., : self.user_dim]

    def head(self, h: Tensor) -> Tensor:
        """Ratings [...] from the encoder's output h [..., out_dim] (the plain module: the per-task reference)."""
        e_u = F.leaky_relu(self.user(h[..., : self.user_dim]))
        e_i = F.leaky_relu(self.item(h[..., self.user_dim:]))
        return self.offset + self.net(self.pref(torch.cat([e_u, e_i], -1))).squeeze(-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))

    def head_batched(self, w: dict[str, Tensor], h: Tensor) -> Tensor:
        """head with each task's own weights w (name -> [tasks, ...], the names of param_groups()["local"]):
        h [tasks, n, out_dim] -> [tasks, n]."""
        e_u = F.leaky_relu(batched_linear(h[..., : self.user_dim], w["user.weight"], w["user.bias"]))
        e_i = F.leaky_relu(batched_linear(h[..., self.user_dim:], w["item.weight"], w["item.bias"]))
        z = batched_linear(torch.cat([e_u, e_i], -1), w["pref.weight"], w["pref.bias"])
        for i, layer in enumerate(self.net):
            z = batched_linear(z, w[f"net.{i}.weight"], w[f"net.{i}.bias"]) if isinstance(layer, nn.Linear) else layer(z)
        return self.offset + z.squeeze(-1)
