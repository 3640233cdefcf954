"""The seed's Omniglot model (four 3x3 conv blocks, 64 channels), as MAML uses it."""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from metarec.models.base import Model


class ConvNet(nn.Module):
    """conv-BN-ReLU x4 (strides 1, 2, 2, 2), global mean pool, linear classifier."""

    def __init__(self, ways: int, channels: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.conv3 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.conv4 = nn.Conv2d(channels, channels, 3, 2, 1)
        # No running statistics: every forward normalises with the batch (= one task's images),
        # as MAML does, and the model stays buffer-free for vmap + functional_call.
        self.bn1 = nn.BatchNorm2d(channels, track_running_stats=False)
        self.bn2 = nn.BatchNorm2d(channels, track_running_stats=False)
        self.bn3 = nn.BatchNorm2d(channels, track_running_stats=False)
        self.bn4 = nn.BatchNorm2d(channels, track_running_stats=False)
        self.fc = nn.Linear(channels, ways)

    def forward(self, x: Tensor) -> Tensor:  # x [n, 1, H, W] -> logits [n, ways]
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.relu(self.bn4(self.conv4(x)))
        return self.fc(x.mean(dim=(-2, -1)))


class Conv4(Model):
    """encoder (identity) -> head (the whole ConvNet); all of it is adapted in the inner loop, on the
    engine's core path (no fast form: convolutions, cross-entropy)."""

    data_kinds = ("classification",)  # what metarec/config/fit.py checks a config against: images -> classes
    offers = ()

    def __init__(self, spec: dict, channels: int = 64):
        super().__init__()
        self.encoder = nn.Identity()
        self.head = ConvNet(int(spec["ways"]), channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))

    @classmethod
    def from_config(cls, spec: dict, cfg, prompt_len: int = 0, prompt_dim: int = 0) -> "Conv4":
        cls.refuse_prompt(prompt_len, prompt_dim)
        return cls(spec, channels=cfg.channels)

    def param_groups(self) -> dict[str, list[str]]:
        """No separate decision layers: every group adapts everything."""
        names = [name for name, _ in self.named_parameters()]
        return {"all": names, "mlp": names}
