"""data=movielens: GroupLens' MovieLens (ml-100k, ml-1m, or RecBole's atomic copy of ml-100k) as
cold-start tasks, with MeLU's features and its new items: those released after a cut year.

Reading is three steps, each a module: download.py finds the files on disk or fetches them,
movielens_io.py reads them into one rating table (MovieLensRaw), movielens_features.py encodes MeLU's
user and item fields; the rest is every rating data set's (rating_source.py).
"""
from __future__ import annotations

import numpy as np

from metarec.data.cache_check import fingerprint
from metarec.data.download import locate_movielens
from metarec.data.movielens_features import rating_features, user_encoder
from metarec.data.movielens_io import RATING_MAX, RATING_MIN, read_movielens
from metarec.data.rating_source import RatingSource
from metarec.data.ratings import RatingData
from metarec.data.states import CUT_YEAR


class MovieLensTasks(RatingSource):
    """The cold-start tasks of one MovieLens copy (data.variant, found through data.root or the cache)."""

    @classmethod
    def read(cls, cfg, split_seed: int, progress: bool = True) -> RatingData:
        folder = locate_movielens(cfg.variant, cfg.root, cfg.cache_dir, progress=progress)
        raw = read_movielens(folder)
        cut = cfg.cut_year if cfg.cut_year is not None else CUT_YEAR[cfg.variant]
        features = rating_features(raw, cut, cfg.item_ids, cfg.zip_prefix)
        ids = raw.item_id if raw.item_id is not None else np.arange(1, raw.num_items + 1)
        return RatingData(raw, features, raw.item_year > cut,  # an unknown year (-1) counts as existing
                          (RATING_MIN, RATING_MAX), {"cut_year": cut}, folder, fingerprint(raw.source_files),
                          [int(i) for i in ids], list(raw.item_title), user_encoder(raw, features, cfg.zip_prefix))

    @property
    def cut(self) -> int:
        """The cut year: items released after it are new."""
        return self.cut_info["cut_year"]

    @property
    def genres(self) -> list[str]:
        """The genres of the multi-hot block, in its column order."""
        return self.features.names["genre"]
