"""What every model of metarec.models.MODELS declares: the data it reads, what it offers an algorithm,
how it builds from its config, its parameter groups and (where it has one) the engine's fast form."""
from __future__ import annotations

from torch import nn

from metarec.engine.forms import FieldsForm, MLPForm


# What a model may offer an algorithm (its class's `offers`, an algorithm's model_needs), in the words
# metarec/config/fit.py's refusals use. What each promises:
# - prompt: from_config's prompt_len / prompt_dim, the parameter group "prompt";
# - last_layer: last_hidden, last_layer (one output), output_offset, factor_dim, factor_features (algo=ridge);
# - fields: `encoder` is a FieldEncoder (metarec/models/melu.py), and output_offset;
# - mamo: MAMONet's towers, preference matrix and profile.
OFFERS = {"prompt": "prompt vectors", "last_layer": "a one-output last layer on a hidden layer",
          "fields": "MeLU's field embeddings", "mamo": "MAMO's memories (model=mamo)"}


class Model(nn.Module):
    """A model's declarations, read by metarec/config/fit.py before any data is read and by the engine."""

    data_kinds: tuple[str, ...] = ("rating", "regression", "classification")  # the TaskSource kinds it reads
    offers: tuple[str, ...] = ()  # keys of OFFERS
    reads: tuple[str, ...] = ()  # the feature sides it needs of a rating data set ("user", "item": its content)

    @classmethod
    def from_config(cls, spec: dict, cfg, prompt_len: int = 0, prompt_dim: int = 0) -> "Model":
        """The model for the data's spec (TaskSource.model_spec) and its config node (model=NAME)."""
        raise NotImplementedError

    @classmethod
    def refuse_prompt(cls, prompt_len: int, prompt_dim: int) -> None:
        """from_config of a model without "prompt" in its offers: prompt vectors asked of it are refused."""
        if prompt_len or prompt_dim:
            from metarec.models import MODELS
            name = next(n for n, m in MODELS.items() if m is cls)
            fits = " or ".join(f"model={n}" for n, m in MODELS.items() if "prompt" in m.offers)
            raise ValueError(f"model={name} has no prompt vectors: use {fits} with algo=prompt")

    def param_groups(self) -> dict[str, list[str]]:
        """Named sets of parameters an algorithm may adapt per task (algo.inner_params)."""
        raise NotImplementedError

    def fast_form(self, whole: bool) -> MLPForm | FieldsForm | None:
        """The written-out form of the part that adapts (the head, or with whole=True the whole model) for
        the engine's fast path (metarec/engine/groups.py); None: the engine's core path."""
        return None
