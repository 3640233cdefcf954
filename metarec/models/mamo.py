"""MAMO's recommendation model (Dong et al., KDD 2020; dongmanqing/Code-for-MAMO) on MeLU's fields.

The user's profile p_u (the embeddings of the data's user fields joined; MovieLens: gender, age,
occupation, zip) and the item's p_i (the rest: year, item context, pooled genres, ...) each pass a
one-layer embedding tower, e_u and e_i joined pass the preference matrix M_{u,I} (a square linear
layer; algo=mamo initialises its weight per user from the task memory), then an MLP predicts the
rating as offset + output.

model.hidden [64, 64] reads: towers of 32 each (64 / 2), the 64 x 64 preference matrix, one hidden
layer of 64, the output. The authors' towers and MLP use leaky ReLU; so does this.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarec.models.base import Model
from metarec.models.melu import FieldEncoder


def batched_linear(h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Each task's own linear layer: h [tasks, n, in], weight [tasks, out, in], bias [tasks, out]."""
    return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))


class MAMONet(Model):
    data_kinds = ("rating",)  # what metarec/config/fit.py checks a config against: a rating data set's fields
    offers = ("mamo",)
    reads = ("user",)  # the user's profile: the data's user fields (metarec/reporting/results_sets.py skips data without)

    def __init__(self, spec: dict, embedding_dim: int = 32, hidden: list[int] = (64, 64)):
        super().__init__()
        self.encoder = enc = FieldEncoder.from_spec(spec, embedding_dim)
        enc.require("user", "model=mamo reads the user's profile from the data's user fields")
        if len(hidden) < 1 or hidden[0] < 2 or hidden[0] % 2:
            raise ValueError(f"model.hidden={list(hidden)}: model=mamo needs an even first width "
                             "(two towers of half of it feed the preference matrix)")
        self.user_dim = enc.side_width("user")
        # p_u: the user side's columns of the encoder's output (the first ones, unless the user has multi-hot
        # fields, pooled after every categorical field: then gathered, and the item tower reads the rest)
        user_cols = enc.side_columns("user")
        self.gather: tuple[Tensor, Tensor] | None = None
        if user_cols != list(range(self.user_dim)):
            taken = set(user_cols)
            self.gather = (torch.tensor(user_cols), torch.tensor([c for c in range(enc.out_dim) if c not in taken]))
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
        cls.refuse_prompt(prompt_len, prompt_dim)
        return cls(spec, cfg.embedding_dim, list(cfg.hidden))

    def param_groups(self) -> dict[str, list[str]]:
        """local (= mlp, the name other algorithms ask for): what MAMO's local update adapts (towers,
        preference matrix, MLP); the field embeddings stay global only, as MeLU's."""
        names = [n for n, _ in self.named_parameters()]
        local = [n for n in names if not n.startswith("encoder.")]
        return {"local": local, "mlp": local, "all": names}

    def profile(self, h: Tensor) -> Tensor:
        """p_u [..., user_dim] from the encoder's output h."""
        return self.split(h)[0]

    def head(self, h: Tensor) -> Tensor:
        """Ratings [...] from the encoder's output h [..., out_dim] (the plain module: the per-task reference)."""
        p_u, p_i = self.split(h)
        e_u, e_i = F.leaky_relu(self.user(p_u)), F.leaky_relu(self.item(p_i))
        return self.offset + self.net(self.pref(torch.cat([e_u, e_i], -1))).squeeze(-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))

    def head_batched(self, w: dict[str, Tensor], h: Tensor) -> Tensor:
        """head with each task's own weights w (name -> [tasks, ...], the names of param_groups()["local"]):
        h [tasks, n, out_dim] -> [tasks, n]."""
        return self.offset + self._head_out(w, self.split(h))[0].squeeze(-1)

    def split(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """(the user tower's input, the item tower's) from h [..., out_dim]; an inner loop splits once,
        since each slice of h costs a pass back that writes a zero tensor of h's size."""
        if self.gather is not None:
            return h[..., self.gather[0].to(h.device)], h[..., self.gather[1].to(h.device)]
        return h[..., : self.user_dim], h[..., self.user_dim:]

    def _head_out(self, w: dict[str, Tensor], hs: tuple[Tensor, Tensor]) -> tuple[Tensor, list[Tensor]]:
        """The head's output [tasks, n, 1] without the offset from hs = split(h), and what head_grads reads:
        the towers' pre-activations, the preference matrix's input, then each net layer's (pre-)activation."""
        u = batched_linear(hs[0], w["user.weight"], w["user.bias"])
        i = batched_linear(hs[1], w["item.weight"], w["item.bias"])
        c = torch.cat([F.leaky_relu(u), F.leaky_relu(i)], -1)
        z = batched_linear(c, w["pref.weight"], w["pref.bias"])
        cache = [u, i, c, z]
        for k, layer in enumerate(self.net):
            z = batched_linear(z, w[f"net.{k}.weight"], w[f"net.{k}.bias"]) if isinstance(layer, nn.Linear) else layer(z)
            cache.append(z)
        return z, cache

    def head_grads(self, w: dict[str, Tensor], hs: tuple[Tensor, Tensor], target: Tensor,
                   scale: Tensor) -> dict[str, Tensor]:
        """Each task's gradient of the sum over tasks of its masked squared error, written out (no
        autograd.grad: second order differentiates this expression, leaky relu' a constant mask as in
        autograd's own double backward); hs = split(h). target = (offset - y) scale and scale = 2 mask / n_task
        [tasks, n, 1] (as the engine's HandPath.loss_terms)."""
        out, (u, i, c, *zs) = self._head_out(w, hs)
        delta = torch.addcmul(target, out, scale)  # dL/d(output) [tasks, n, 1]
        grads: dict[str, Tensor] = {}
        inputs = [c, *zs[:-1]]  # each net layer's input (zs[0] is the preference matrix's output)
        for k in range(len(self.net) - 1, -1, -1):
            if isinstance(self.net[k], nn.Linear):
                grads[f"net.{k}.weight"] = torch.bmm(delta.transpose(1, 2), inputs[k + 1])
                grads[f"net.{k}.bias"] = delta.sum(1)
                delta = torch.bmm(delta, w[f"net.{k}.weight"])
            else:  # the LeakyReLU whose output net layer k computed
                delta = _leaky_back(delta, inputs[k + 1].detach())
        grads["pref.weight"], grads["pref.bias"] = torch.bmm(delta.transpose(1, 2), c), delta.sum(1)
        delta = torch.bmm(delta, w["pref.weight"])  # dL/dc
        tower = u.shape[-1]
        for name, pre, part, x in (("user", u, delta[..., :tower], hs[0]), ("item", i, delta[..., tower:], hs[1])):
            d = _leaky_back(part, pre.detach())
            grads[f"{name}.weight"], grads[f"{name}.bias"] = torch.bmm(d.transpose(1, 2), x), d.sum(1)
        return grads


_leaky_relu_backward = torch.ops.aten.leaky_relu_backward.default


def _leaky_back(grad: Tensor, pre: Tensor, slope: float = 0.01) -> Tensor:
    """leaky relu' (nn.LeakyReLU's default slope) applied to grad as autograd applies it, at the pre-activation pre."""
    return _leaky_relu_backward(grad, pre, slope, False)
