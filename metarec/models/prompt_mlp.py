"""The decision layers of MeLU and the sinusoid MLP: a ReLU MLP with one output, optional learnable
prompt vectors joined to every input row, and an optional offset added to the output."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from metarec.engine.forms import MLPForm


class PromptMLP(nn.Module):
    def __init__(self, in_dim: int, hidden: list[int], offset: float | None = None, prompt_len: int = 0,
                 prompt_dim: int = 0):
        super().__init__()
        self.prompt = nn.Parameter(0.1 * torch.randn(prompt_len, prompt_dim)) if prompt_len * prompt_dim else None
        widths = [in_dim + prompt_len * prompt_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], 1))
        self.net = nn.Sequential(*layers)
        self.in_dim = in_dim
        # Predicting offset + output keeps the meta-learned start on the rating scale, so the
        # inner loop does not spend its steps shifting the scale (DESIGN.md, "Pitfalls").
        self.offset: Tensor | None
        self.register_buffer("offset", None if offset is None else torch.tensor(float(offset)))

    def join_prompt(self, h: Tensor) -> Tensor:
        if self.prompt is None:
            return h
        return torch.cat([h, self.prompt.reshape(-1).to(h.dtype).expand(*h.shape[:-1], -1)], dim=-1)

    def forward(self, h: Tensor) -> Tensor:  # h [..., in_dim] -> [...]
        out = self.net(self.join_prompt(h)).squeeze(-1)
        return out if self.offset is None else self.offset + out

    def hidden(self, h: Tensor) -> Tensor:
        """The last hidden layer [..., width]: what the last layer reads."""
        return self.net[:-1](self.join_prompt(h))

    def form(self) -> MLPForm:
        """This module as the engine's fast path writes it out."""
        layers = tuple((f"net.{i}.weight", f"net.{i}.bias") for i in range(0, len(self.net), 2))
        return MLPForm(layers, self.in_dim, prompt=None if self.prompt is None else "prompt",
                       offset=None if self.offset is None else "offset")
