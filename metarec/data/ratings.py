"""The one rating table every reader fills (MovieLens' files, any RecBole atomic data set), and what a
reader hands the cold-start protocol: that table, its features encoded as model input, the new items."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from torch import Tensor

from metarec.data.features import Features


@dataclass
class RatingTable:
    """Ratings as rows into a user and an item table."""
    rating_user: np.ndarray  # [R] int64
    rating_item: np.ndarray  # [R] int64
    rating: np.ndarray  # [R] float32
    timestamp: np.ndarray  # [R] int64 (0 when the data has none)
    num_users: int
    num_items: int
    source_files: list[Path]


@dataclass
class RatingData:
    """One data set read: what the protocol (protocol.py) and the model input (rows.py) are built from."""
    table: RatingTable  # a reader may carry more columns (MovieLensRaw): the protocol reads these
    features: Features  # each (user, item) pair's model input
    new_item: np.ndarray  # [items] bool: the cold-start items
    rating_scale: tuple[float, float]  # (lowest, highest): every reader refuses a rating off it
    cut_info: dict  # the new-item cut, as `metarec data info` shows it
    folder: Path  # where the files were found
    fingerprint: str  # SHA-256 of the files read (cache_check.fingerprint): a checkpoint refuses other data
    item_ids: list  # the data set's own id of each item row (`metarec recommend` takes and shows them)
    item_titles: list[str]  # each item row's title ("" where there is none)
    encode_user: Callable[[dict, Tensor], Tensor]  # a new user's features by name written into a feature row's codes
    test_users: np.ndarray | None = None  # [users] bool: a published test split (data.test_user_field); None: seeded
    facts: dict = field(default_factory=dict)  # what `metarec data info` adds for this data set
