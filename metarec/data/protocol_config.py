"""The cold-start protocol's config keys (metarec/data/protocol.py runs it), shared by data=movielens
(metarec/config/schema.py's MovieLensConfig) and data=atomic (atomic_config.AtomicConfig): each key's valid
range is declared here once (metarec/checks.py). Plain dataclasses: composing imports no data code."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from metarec.checks import Related, ordered, rule, shares


@dataclass
class ProtocolConfig(Related):
    query_size: int = rule(10, ">= 1")  # query ratings per task (MeLU: 10)
    shots: Optional[int] = rule(None, ">= 1")  # support ratings per evaluation task; null = all the rest
    min_ratings: int = rule(13, ">= 2")  # users keep a partition when they have min..max ratings in it (MeLU: 13-100)
    max_ratings: int = rule(100, ">= 2")
    heavy_users: bool = False  # meta-train users above max_ratings train too (MeLU drops them): see protocol.py
    split: list[float] = rule([0.7, 0.1, 0.2], shares(3))  # meta-train / validation / test users
    split_seed: Optional[int] = rule(None, ">= 0")  # null = the run's seed
    item_ids: bool = False  # item id embeddings (a cold item has no trained id: UNK)
    item_id_dropout: float = rule(0.1, "in [0, 1)")  # share of training ids replaced by UNK so the UNK row is trained
    item_stats: bool = True  # item context from other users' training ratings (the training pool; inductive)
    item_stats_transductive: bool = False  # ... and at evaluation also every support set of the state (transductive)
    item_factors: int = rule(0, ">= 0")  # rank of collaborative item factors fitted on the training ratings; 0 = none
    factor_reg: float = rule(10.0, "> 0")  # their ridge penalty in the factorisation
    factor_folds: int = rule(5, ">= 2")  # meta-train users read factors fitted without their fold (cross-fitting)
    mf_rank: int = rule(10, ">= 1")  # the mf_foldin / mf_transductive floors' rank (metarec/data/mf_floors.py) ...
    mf_reg: float = rule(10.0, "> 0")  # ... the ridge penalty of their factors fitted on the training ratings ...
    mf_foldin_reg: float = rule(3.0, "> 0")  # ... of a task's own factors in mf_foldin ...
    mf_transductive_reg: float = rule(10.0, "> 0")  # ... and of every factor in mf_transductive's joint fit
    transductive: bool = False  # the exact transductive context as float inputs (metarec/data/transductive.py) ...
    trans_rank: int = rule(10, ">= 0")  # ... its items' factors from the visible ratings (0 = bias and count only) ...
    trans_reg: float = rule(10.0, "> 0")  # ... their ALS ridge penalty ...
    trans_folds: int = rule(5, ">= 2")  # ... and the cross-fitting folds of users ...
    trans_shares: list[float] = rule([1.0], "each in (0, 1]")  # ... and training's context from these shares of the meta-train users (a task draws one)
    val_items: float = rule(0.0, "in [0, 1)")  # share of the new items held out (seeded) for val_item_cold; 0 = MeLU's item_cold

    @staticmethod
    def relations(c, prefix: str) -> list[str]:
        """A task keeps query_size ratings and at least one support rating."""
        return ordered(c, prefix, ("query_size", "<", "min_ratings"), ("min_ratings", "<=", "max_ratings"))
