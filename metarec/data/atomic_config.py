"""data=atomic's config schema (conf/data/atomic.yaml): which RecBole atomic data set, which of its
fields are features, which items are new. Plain dataclasses, so composing a config imports no data code.

The protocol keys (query_size ... trans_folds) are MovieLens' (protocol_config.ProtocolConfig, which
both schemas extend): both data sets run the same cold-start protocol (metarec/data/protocol.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from metarec.checks import rule
from metarec.data.protocol_config import ProtocolConfig


def scale_pair(value) -> str | None:
    """The rule of data.rating_scale: [lowest, highest], two numbers with lowest < highest."""
    pair = list(value) if isinstance(value, (list, tuple)) else []
    numbers = len(pair) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
    return None if numbers and pair[0] < pair[1] else "must be [lowest, highest] with lowest < highest, or null"


@dataclass
class CutConfig:
    """Which items are new: a random `share` of them, else those whose `field` is above `value`, else
    above the `quantile` of the items' values, else above the value that puts `new_ratings` of the ratings
    on new items. An item field (NAME.item) is read as a number; an interaction field (NAME.inter, e.g.
    timestamp) gives each item its first value; no field: data.time_field, and without one a seeded random
    draw of items holding `new_ratings` of the ratings."""
    field: Optional[str] = None  # null: each item's first rating time (data.time_field), else a random draw
    value: Optional[float] = rule(None, "any")
    quantile: Optional[float] = rule(None, "in (0, 1)")
    share: Optional[float] = rule(None, "in (0, 1)")
    new_ratings: float = rule(0.3, "in (0, 1)")  # no value or quantile: the cut puts this share of the ratings on new items


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
    test_user_field: Optional[str] = None  # a NAME.user float field: users above 0.5 are the test users (a published split,
    # e.g. MetaHIN's metahin_new_user); the others split into meta-train / validation by data.split's first two shares
    title_field: Optional[str] = None  # a NAME.item field that `metarec recommend` shows as the title; null: none
    rating_scale: Optional[list[float]] = rule(None, scale_pair)  # [lowest, highest]: other ratings are refused; null = any number
