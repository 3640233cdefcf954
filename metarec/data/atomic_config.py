"""data=atomic's config schema (conf/data/atomic.yaml): which RecBole atomic data set, which of its
fields are features, which items are new. Plain dataclasses, so composing a config imports no data code.

The protocol keys (query_size ... trans_folds) are MovieLens' (protocol_config.ProtocolConfig, which
both schemas extend): both data sets run the same cold-start protocol (metarec/data/movielens.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from metarec.checks import rule
from metarec.data.protocol_config import ProtocolConfig


@dataclass
class CutConfig:
    """Which items are new: a random `share` of them, else those whose `field` is above `value`, else
    above the `quantile` of the items' values (neither given: 0.8). An item field (NAME.item) is read
    as a number; an interaction field (NAME.inter, e.g. timestamp) gives each item its first value."""
    field: Optional[str] = "timestamp"
    value: Optional[float] = rule(None, "any")
    quantile: Optional[float] = rule(None, "in (0, 1)")
    share: Optional[float] = rule(None, "in (0, 1)")


@dataclass
class AtomicConfig(ProtocolConfig):
    name: str = "atomic"
    root: Optional[str] = None  # the folder holding NAME.inter (+ NAME.user, NAME.item); RecBole's data_path/dataset
    dataset: Optional[str] = None  # NAME; null = the folder's only .inter file
    user_id_field: str = "user_id"  # RecBole's USER_ID_FIELD ...
    item_id_field: str = "item_id"  # ... ITEM_ID_FIELD ...
    rating_field: str = "rating"  # ... RATING_FIELD ...
    time_field: str = "timestamp"  # ... and TIME_FIELD (optional in the file)
    user_features: list[str] = field(default_factory=list)  # NAME.user fields the model reads
    item_features: list[str] = field(default_factory=list)  # NAME.item fields the model reads
    float_buckets: int = rule(10, ">= 2")  # a float feature's buckets: quantiles of its values (items: existing ones)
    float_edges: Any = None  # {field: edges}: a float field's own bucket edges
    token_vocab: Any = None  # {field: tokens}: a token field's codes in this order
    cut: CutConfig = field(default_factory=CutConfig)
    rating_scale: Optional[list[float]] = rule(None, "any")  # [lowest, highest]: other ratings are refused; null = any number
