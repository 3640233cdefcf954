"""The sinusoid regressor of the MAML paper (MLP 40-40), with optional prompt vectors."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class PromptedMLP(nn.Module):
    """ReLU MLP -> one output; a learnable prompt, when present, is joined to every input row."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], prompt_len: int = 0, prompt_dim: int = 0):
        super().__init__()
        n_prompt = prompt_len * prompt_dim
        if n_prompt > 0:
            self.prompt = nn.Parameter(0.1 * torch.randn(prompt_len, prompt_dim))
        layers: list[nn.Module] = []
        width = in_dim + n_prompt
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:  # x [n, in_dim] -> [n]
        if hasattr(self, "prompt"):
            prompt = self.prompt.reshape(1, -1).expand(x.shape[0], -1)
            x = torch.cat([x, prompt.to(x.dtype)], dim=-1)
        return self.net(x).squeeze(-1)


class MLP(nn.Module):
    """encoder (identity) -> head (the MLP); the engine adapts parameters named by inner_names."""

    def __init__(self, spec: dict, hidden=(40, 40), prompt_len: int = 0, prompt_dim: int = 0):
        super().__init__()
        if (prompt_len > 0) != (prompt_dim > 0):
            raise ValueError(f"prompt_len and prompt_dim must both be > 0 or both 0, got {prompt_len}, {prompt_dim}")
        self.encoder = nn.Identity()
        self.head = PromptedMLP(int(spec["in_dim"]), tuple(hidden), prompt_len, prompt_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))

    @classmethod
    def from_config(cls, spec: dict, cfg, prompt_len: int = 0, prompt_dim: int = 0) -> "MLP":
        return cls(spec, tuple(cfg.hidden), prompt_len, prompt_dim)

    def param_groups(self) -> dict[str, list[str]]:
        """Named sets of parameters an algorithm may adapt per user; the whole model is the MLP."""
        names = [name for name, _ in self.named_parameters()]
        groups = {"all": names, "mlp": names}
        if "head.prompt" in names:
            groups["prompt"] = ["head.prompt"]
        return groups
