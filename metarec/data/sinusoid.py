"""Sinusoid regression tasks of the MAML paper: y = A sin(x - phase), K points per task."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from metarec.checks import Related, ordered, rule
from metarec.tasks import TaskBatch, TaskSource

_SPLIT_OFFSET = {"val": 1, "test": 2}  # val and test draw from different seeded streams


@dataclass
class SinusoidConfig(Related):
    name: str = "sinusoid"
    shots: int = rule(5, ">= 1")  # K support points per task
    query_size: int = rule(10, ">= 1")  # query points per task
    amp_min: float = rule(0.1, "any")  # amplitude A ~ U[amp_min, amp_max]
    amp_max: float = rule(5.0, "any")
    phase_min: float = rule(0.0, "any")  # phase ~ U[phase_min, phase_max]
    phase_max: float = rule(math.pi, "any")
    x_min: float = rule(-5.0, "any")  # inputs x ~ U[x_min, x_max]
    x_max: float = rule(5.0, "any")
    n_val_tasks: int = rule(100, ">= 1")  # fixed validation tasks
    n_test_tasks: int = rule(600, ">= 1")  # fixed test tasks
    eval_seed: int = rule(0, ">= 0")  # fixes the val/test tasks, identical across runs

    @staticmethod
    def relations(c, prefix: str) -> list[str]:
        return ordered(c, prefix, ("amp_min", "<=", "amp_max"), ("phase_min", "<=", "phase_max"), ("x_min", "<", "x_max"))


class SinusoidTasks(TaskSource):
    """TaskSource for sinusoid regression; every task is freshly drawn, nothing is stored."""

    kind = "regression"

    def __init__(self, cfg: SinusoidConfig, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self._eval: dict[str, TaskBatch] = {}

    def _draw(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        c = self.cfg

        def uniform(*shape: int, lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(*shape, generator=generator, dtype=torch.float32)

        amp = uniform(n_tasks, 1, lo=c.amp_min, hi=c.amp_max)  # [tasks, 1]
        phase = uniform(n_tasks, 1, lo=c.phase_min, hi=c.phase_max)
        x = uniform(n_tasks, c.shots + c.query_size, lo=c.x_min, hi=c.x_max)  # [tasks, shots + query]
        y = amp * torch.sin(x - phase)
        x, y = x.unsqueeze(-1).to(self.device), y.to(self.device)  # x [tasks, points, 1]
        k = c.shots
        ones = lambda n: torch.ones(n_tasks, n, dtype=torch.float32, device=self.device)  # noqa: E731
        return TaskBatch(x[:, :k], y[:, :k], ones(k), x[:, k:], y[:, k:], ones(c.query_size))

    def sample_train(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        return self._draw(n_tasks, generator)

    def eval_tasks(self, split: str) -> dict[str, TaskBatch]:
        if split not in _SPLIT_OFFSET:
            raise ValueError(f"unknown split {split!r}: choose val or test")
        if split not in self._eval:
            n = self.cfg.n_val_tasks if split == "val" else self.cfg.n_test_tasks
            gen = torch.Generator().manual_seed(1000 * self.cfg.eval_seed + _SPLIT_OFFSET[split])
            self._eval[split] = self._draw(n, gen)
        return {split: self._eval[split]}

    def model_spec(self) -> dict:
        return {"in_dim": 1}

    def info(self) -> dict:
        c = self.cfg
        return {
            "shots": c.shots, "query_size": c.query_size,
            "amplitude": [c.amp_min, c.amp_max], "phase": [c.phase_min, c.phase_max], "x": [c.x_min, c.x_max],
            "val_tasks": c.n_val_tasks, "test_tasks": c.n_test_tasks, "eval_seed": c.eval_seed,
        }
