"""The sinusoid regressor of the MAML paper (MLP 40-40), with optional prompt vectors."""
from __future__ import annotations

from torch import Tensor, nn

from metarec.engine.forms import MLPForm
from metarec.models.base import Model
from metarec.models.prompt_mlp import PromptMLP


class MLP(Model):
    """encoder (identity) -> head (the MLP); the engine adapts parameters named by inner_names."""

    data_kinds = ("regression",)  # what metarec/config/fit.py checks a config against: vectors x -> a number
    offers = ("prompt", "last_layer")

    def __init__(self, spec: dict, hidden=(40, 40), prompt_len: int = 0, prompt_dim: int = 0):
        super().__init__()
        if (prompt_len > 0) != (prompt_dim > 0):
            raise ValueError(f"prompt_len and prompt_dim must both be > 0 or both 0, got {prompt_len}, {prompt_dim}")
        self.encoder = nn.Identity()
        self.head = PromptMLP(int(spec["in_dim"]), list(hidden), None, prompt_len, prompt_dim)

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

    def fast_form(self, whole: bool) -> MLPForm | None:
        """The engine's fast path: the head (all of it adapts, so whole=True does not arise)."""
        return None if whole else self.head.form()

    # what algo=ridge solves for: the last layer on the last hidden layer
    factor_dim = 0

    def last_hidden(self, x: Tensor) -> Tensor:
        return self.head.hidden(self.encoder(x))

    def last_layer(self) -> nn.Linear:
        return self.head.net[-1]

    def output_offset(self) -> float:
        return 0.0

    def factor_features(self, x: Tensor) -> None:
        return None
