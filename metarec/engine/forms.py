"""What a model declares to get the engine's fast path: the shape of the part that adapts, by
parameter names. The engine writes that shape out as batched matmuls (metarec/engine/hand.py);
a model that declares nothing runs the core path (torch.func over padded tasks)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MLPForm:
    """A module computing offset + net(cat(h, prompt)).squeeze(-1): Linear layers with a ReLU between
    each two and one output; the prompt (flattened) is joined to every input row. Names are the module's own."""
    layers: tuple[tuple[str, str], ...]  # (weight, bias) of each Linear, input side first
    in_dim: int  # the width of h, before the prompt is joined
    prompt: str | None = None  # a parameter [prompt_len, prompt_dim]
    offset: str | None = None  # a buffer added to the output


@dataclass(frozen=True)
class FieldsForm:
    """A whole model head(encoder(x)) whose encoder joins one embedding per field (column i of x indexes
    fields[i]) and the multi-hot flags x[..., len(fields):] mean-pooled over a table; names are the
    model's, and the head (model.head) is an MLPForm in its own names."""
    fields: tuple[str, ...]  # each field's embedding table [rows, dim], in x's column order
    multi: str | None  # the table the multi-hot flags pool [flags, dim]; None: no multi-hot block
    head: MLPForm
    factors: str | None = None  # a buffer of fixed rows [rows, k] joined last, x's last column indexing it
