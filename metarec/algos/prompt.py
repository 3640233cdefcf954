"""Prompt-based meta-learning: prompt vectors phi joined to the MLP input, meta-learned with theta.

adapt=theta (the seed's formulation): the inner loop adapts theta with phi fixed; the outer loop
updates theta and phi. adapt=prompt: the inner loop adapts only phi per user (a few numbers of
per-user state); the outer loop learns theta and phi's initialisation.

No single paper: the seed document's formulation (DESIGN.md; prompt tuning as in Lester et al. 2021, its
per-user adaptation as in MAML). Departures from the seed's sample code: phi enters the MLP's input, the
inner loop is MAML's functional one (the sample's model(x, weights=...) does not exist in nn.Module).
Inductive: a task's predictions read its own support set and the training ratings only.
"""
from __future__ import annotations

from dataclasses import dataclass

from metarec.algos.maml import MAML, MAMLConfig
from metarec.checks import rule


@dataclass
class PromptConfig(MAMLConfig):
    """algo=prompt (conf/algo/prompt.yaml): MAML's keys and the prompt vectors'."""

    name: str = "prompt"
    prompt_len: int = rule(4, ">= 1")  # number of prompt vectors joined to the MLP input (0 would be MAML)
    prompt_dim: int = rule(8, ">= 1")  # size of each prompt vector
    adapt: str = rule("theta", "one of theta, prompt")  # theta (the seed's formulation) | prompt (the inner loop adapts phi only)


class Prompt(MAML):
    Config = PromptConfig

    @classmethod
    def model_needs(cls, cfg) -> tuple[str, ...]:
        return ("prompt",)

    @classmethod
    def model_options(cls, cfg) -> dict:
        return {"prompt_len": cfg.prompt_len, "prompt_dim": cfg.prompt_dim}

    def inner_params(self) -> str:
        return "prompt" if self.cfg.adapt == "prompt" else self.cfg.inner_params
