"""data=atomic's config schema (conf/data/atomic.yaml): which RecBole atomic data set, which of its
fields are features, which items are new. Plain dataclasses, so composing a config imports no data code.

The protocol keys (query_size ... mf_transductive_reg) are MovieLens' (metarec/config.py's
MovieLensConfig), with the same defaults: both data sets run the same cold-start protocol
(metarec/data/movielens.py); tests/test_atomic.py checks that the two stay alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class CutConfig:
    """Which items are new: a random `share` of them, else those whose `field` is above `value`, else
    above the `quantile` of the items' values (neither given: 0.8). An item field (NAME.item) is read
    as a number; an interaction field (NAME.inter, e.g. timestamp) gives each item its first value."""
    field: Optional[str] = "timestamp"
    value: Optional[float] = None
    quantile: Optional[float] = None
    share: Optional[float] = None


@dataclass
class AtomicConfig:
    name: str = "atomic"
    root: Optional[str] = None  # the folder holding NAME.inter (+ NAME.user, NAME.item); RecBole's data_path/dataset
    dataset: Optional[str] = None  # NAME; null = the folder's only .inter file
    user_id_field: str = "user_id"  # RecBole's USER_ID_FIELD ...
    item_id_field: str = "item_id"  # ... ITEM_ID_FIELD ...
    rating_field: str = "rating"  # ... RATING_FIELD ...
    time_field: str = "timestamp"  # ... and TIME_FIELD (optional in the file)
    user_features: list[str] = field(default_factory=list)  # NAME.user fields the model reads
    item_features: list[str] = field(default_factory=list)  # NAME.item fields the model reads
    float_buckets: int = 10  # a float feature's buckets: quantiles of its values (items: existing ones)
    float_edges: Any = None  # {field: edges}: a float field's own bucket edges
    token_vocab: Any = None  # {field: tokens}: a token field's codes in this order
    cut: CutConfig = field(default_factory=CutConfig)
    rating_scale: Optional[list[float]] = None  # [lowest, highest]: other ratings are refused; null = any number
    # the cold-start protocol, as data=movielens has it
    query_size: int = 10  # query ratings per task (MeLU: 10)
    shots: Optional[int] = None  # support ratings per evaluation task; null = all the rest
    min_ratings: int = 13  # users keep a partition when they have min..max ratings in it (MeLU: 13-100)
    max_ratings: int = 100
    heavy_users: bool = False  # meta-train users above max_ratings train too
    split: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])  # meta-train / validation / test users
    split_seed: Optional[int] = None  # null = the run's seed
    item_ids: bool = False  # item id embeddings (a cold item has no trained id: UNK)
    item_id_dropout: float = 0.1  # share of training ids replaced by UNK so the UNK row is trained
    item_stats: bool = True  # item context from other users' ratings (training pool; + support sets at evaluation)
    item_factors: int = 0  # rank of collaborative item factors fitted on the training ratings; 0 = none
    factor_reg: float = 10.0  # their ridge penalty in the factorisation
    factor_folds: int = 5  # meta-train users read factors fitted without their fold (cross-fitting)
    mf_rank: int = 10  # the mf_foldin / mf_transductive floors (metarec/data/mf_floors.py): rank ...
    mf_reg: float = 10.0  # ... the ridge penalty of their factors fitted on the training ratings ...
    mf_foldin_reg: float = 3.0  # ... of a task's own factors in mf_foldin ...
    mf_transductive_reg: float = 10.0  # ... and of every factor in mf_transductive's joint fit
