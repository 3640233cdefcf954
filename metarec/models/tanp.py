"""TaNP's networks (Lin et al., WWW 2021): the set encoders, the task memory and the modulated decoder.

Every function takes sets of examples as [..., n, width] with a mask [..., n] (1 = a real example), so
one call serves a padded batch of tasks [tasks, n, width] and one unpadded task [n, width] alike. The
inputs are MeLU's field embeddings (metarec/models/melu.py's FieldEncoder, owned by the model the
algorithm trains); metarec/algos/tanp.py says how these parts make the loss and where they depart
from the paper.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def mlp(widths: list[int]) -> nn.Sequential:
    """Linear layers of the given widths with ReLUs between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    return nn.Sequential(*layers)


def masked_mean(r: Tensor, mask: Tensor) -> Tensor:
    """The mean of r [..., n, d] over the real examples of each set: [..., d]."""
    m = mask.to(r.dtype).unsqueeze(-1)
    return (r * m).sum(-2) / m.sum(-2).clamp(min=1.0)


def pairs(h: Tensor, y: Tensor) -> Tensor:
    """(x, y) pairs [..., n, width + 1]: an example's features beside its (centred) rating."""
    return torch.cat([h, y.to(h.dtype).unsqueeze(-1)], dim=-1)


class TaNPNet(nn.Module):
    """The latent path (x, y) -> r_i -> mean -> (mu, log variance) of z, the deterministic path
    (x, y) -> task embedding -> task memory, and the decoder (x, z) -> rating whose hidden layers
    the task embedding modulates (FiLM, or FiLM with a gate)."""

    def __init__(self, x_dim: int, encoder_hidden: list[int], latent_dim: int, task_hidden: list[int],
                 task_dim: int, clusters: int, temperature: float, decoder_hidden: list[int], modulation: str):
        super().__init__()
        self.latent_encoder = mlp([x_dim + 1, *encoder_hidden, latent_dim])  # authors' Encoder (z1)
        self.latent_hidden = nn.Linear(latent_dim, latent_dim)  # authors' MuSigmaEncoder (z2)
        self.to_mu, self.to_logvar = nn.Linear(latent_dim, latent_dim), nn.Linear(latent_dim, latent_dim)
        self.task_encoder = mlp([x_dim + 1, *task_hidden, task_dim])
        self.centres = nn.Parameter(nn.init.xavier_uniform_(torch.empty(clusters, task_dim)))
        self.temperature, self.modulation = temperature, modulation
        widths = [x_dim + latent_dim, *decoder_hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        # per hidden layer: gamma, beta (FiLM) and, with gating, eta and the gate delta
        n_mod = 4 if modulation == "gating" else 2
        self.film = nn.ModuleList(nn.Linear(task_dim, n_mod * b, bias=False) for b in decoder_hidden)
        self.out = nn.Linear(widths[-1], 1)

    def latent(self, h: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, log variance) [..., latent] of z given a set of (x, y) pairs."""
        r = masked_mean(self.latent_encoder(pairs(h, y)), mask)
        hidden = torch.relu(self.latent_hidden(r))
        return self.to_mu(hidden), self.to_logvar(hidden)

    def task(self, h: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """The task embedding [..., task_dim] of a support set (the deterministic path)."""
        return masked_mean(self.task_encoder(pairs(h, y)), mask)

    def memory(self, task: Tensor) -> tuple[Tensor, Tensor]:
        """The customisation module: the task's soft assignment C [..., clusters] to the centres (a
        Student-t kernel on the distance, as the authors' MemoryUnit) and the task embedding plus
        the centres it is assigned to."""
        dist = (task.unsqueeze(-2) - self.centres).norm(dim=-1)  # [..., clusters]
        kernel = (dist / self.temperature + 1).pow(-(self.temperature + 1) / 2)
        c = kernel / kernel.sum(-1, keepdim=True)
        return c, task + c @ self.centres

    def modulate(self, layer: int, task: Tensor) -> tuple[Tensor, Tensor]:
        """(gamma, beta) [..., 1, width] of a hidden layer from the task embedding."""
        parts = self.film[layer](task).unsqueeze(-2).chunk(4 if self.modulation == "gating" else 2, dim=-1)
        gamma, beta = torch.tanh(parts[0]), torch.tanh(parts[1])
        if self.modulation == "gating":  # authors' Gating_Decoder: each mixed with eta by the gate delta
            eta, delta = torch.tanh(parts[2]), torch.sigmoid(parts[3])
            gamma, beta = gamma * delta + eta * (1 - delta), beta * delta + eta * (1 - delta)
        return gamma, beta

    def decode(self, h: Tensor, z: Tensor, task: Tensor) -> Tensor:
        """Centred ratings [..., n] of the examples h [..., n, width] given z [..., latent] and the
        task embedding [..., task_dim]: each hidden layer is linear, modulated, then a ReLU."""
        a = torch.cat([h, z.unsqueeze(-2).expand(*h.shape[:-1], z.shape[-1])], dim=-1)
        for i, layer in enumerate(self.hidden):
            gamma, beta = self.modulate(i, task)
            a = torch.relu(layer(a) * gamma + beta)
        return self.out(a).squeeze(-1)
