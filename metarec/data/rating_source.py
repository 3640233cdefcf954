"""The task source over any rating data set read into one rating table (data=movielens, data=atomic):
the data path's steps after the reading, each a module with one job, assembled here in order:

  protocol.py  the seeded user split, every state's tasks, the training pool and its episodes
  rows.py      each rating's model input, with its side inputs (factors.py, transductive.py,
               item_context.py), and the task batches of padded rating rows
  floors.py    the non-learned floors (mf_floors.py, floor_cache.py)
  catalog.py   rows of any (user, item) pair: the catalogue ranking and `metarec recommend`

The whole set lives as tensors on `device`."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from metarec.checks import check
from metarec.data import protocol as cold_start
from metarec.data.catalog import CatalogRows
from metarec.data.floors import Floors
from metarec.data.mf_floors import MFSettings
from metarec.data.protocol import VAL_STATES
from metarec.data.ratings import RatingData
from metarec.data.rows import InputRows
from metarec.data.states import STATES
from metarec.tasks import INDUCTIVE, TRANSDUCTIVE, Catalog, TaskBatch, TaskSource, Visible


class RatingSource(TaskSource):
    """TaskSource over one rating data set: a subclass reads it (`read`: movielens.py, atomic.py), the
    rest is the same for every reader."""

    kind = "rating"

    def __init__(self, cfg, device: torch.device | str = "cpu", seed: int = 0, progress: bool = True):
        """cfg: data.* (the schema's keys, ProtocolConfig's among them); seed: the run's, which splits unless
        data.split_seed is set. A config built outside metarec's commands (Python, tests) meets the rules
        its schema declares here, once, before any file is read."""
        check(cfg, "data.")
        data = self.read(cfg, seed if cfg.split_seed is None else cfg.split_seed, progress)
        self.cfg, self.device, self.data = cfg, torch.device(device), data
        self.raw, self.features, self.new_item = data.table, data.features, data.new_item
        self.folder, self.source_files = data.folder, [Path(p) for p in data.table.source_files]
        self.rating_scale, self.cut_info, self.num_items = data.rating_scale, data.cut_info, data.table.num_items
        split_seed = seed if cfg.split_seed is None else cfg.split_seed
        p = self.protocol = cold_start.draw(cfg, data.table, data.new_item, split_seed, self.device, data.test_users,
                                            data.cut_info)
        self.user_role, self.tasks, self.small_states, self.mu = p.user_role, p.tasks, p.small_states, p.mu
        self.pool_users, self.pool, self.pool_mask, self.train_ratings = p.pool_users, p.pool, p.pool_mask, p.train_ratings
        self.pool_flat, self.pool_owner = p.pool_flat, p.pool_owner
        # ridge penalties are in squared rating units: stretched with the scale's span over 1-5's (MovieLens' stay)
        unit = (self.rating_scale[1] - self.rating_scale[0]) / 4
        self.inputs = InputRows(cfg, data, p, self.device, split_seed, unit)
        i = self.inputs
        self.x, self.y, self.rating_item, self.fields, self.multi_hot = i.x, i.y, i.rating_item, i.fields, i.multi_hot
        self.factor_table, self.trans_rows = i.factor_table, i.trans_rows
        self.item_context = None if i.context is None else i.context.tables  # per state: each rating's two codes
        # states whose evaluation inputs counted their support sets: every state's where the side table or the
        # item context reads them, and any state an algorithm asks `visible` of
        reads_supports = cfg.transductive or (cfg.item_stats and cfg.item_stats_transductive)
        self.supports_read: set[str] = set(p.tasks) if reads_supports else set()
        self.mf_settings = MFSettings.of(cfg, unit)
        self.floor_set = Floors(data.table, p, self.y, self.rating_item, data.fingerprint, self.mf_settings)
        self.item_bias, self.item_count = self.floor_set.item_bias, self.floor_set.item_count  # [items] the bias floor's
        self.catalogue = CatalogRows(data, i, p, self.floor_set, cfg.factor_folds)

    @classmethod
    def read(cls, cfg, split_seed: int, progress: bool) -> RatingData:
        """The data set data.* names, read into one rating table with its features and new items."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg, device: torch.device, seed: int = 0, progress: bool = True) -> "RatingSource":
        return cls(cfg, device, seed, progress=progress)

    def fingerprint(self) -> str:
        return self.data.fingerprint

    def model_spec(self) -> dict:
        blocks = [list(b) for b in self.multi_hot]  # one block as its [name, width] pair, as MeLU's spec reads it
        spec = {"fields": [list(f) for f in self.fields], "multi_hot": blocks[0] if len(blocks) == 1 else blocks,
                "offset": self.mu, "sides": {k: list(v) for k, v in self.inputs.sides.items()}}
        if self.factor_table is not None:
            spec["factors"] = self.factor_table  # [rows, rank], read through the input's last column
        return spec

    def sample_train(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        """Fresh episodes from meta-train users' existing-item ratings (protocol.Protocol.episode)."""
        c = self.cfg
        return self.rows_batch(*self.protocol.episode(n_tasks, generator, c.query_size, c.max_ratings, c.shots), generator)

    def rows_batch(self, support: Tensor, support_mask: Tensor, query: Tensor, query_mask: Tensor,
                   generator: torch.Generator | None = None, context: str = "train") -> TaskBatch:
        return self.inputs.batch(support, support_mask, query, query_mask, generator, context)

    def eval_tasks(self, split: str) -> dict[str, TaskBatch]:
        out = {}
        for s in VAL_STATES if split == "val" else STATES:
            t = self.tasks.get(s)
            if t is not None and len(t.users):
                out[s] = self.rows_batch(t.support, t.support_mask, t.query, t.query_mask, context=s)
        return out

    def floors(self, state: str) -> dict[str, Tensor]:
        """Query predictions of the non-learned floors on the same tasks: [tasks, Q] each."""
        return self.floor_set(self.tasks[state])

    def floor_classes(self) -> dict[str, str]:
        return self.floor_set.classes()

    def visible(self, state: str) -> Visible:
        """The ratings `state` shows (the hook of the exact transductive input and of the item-task
        learners): "train" the meta-train ratings; any other state its tasks' support ratings (never a
        query), which makes what is predicted there transductive (recorded: input_class)."""
        if state != "train" and state in self.tasks:
            self.supports_read.add(state)
        return self.protocol.visible(self.raw, state)

    def input_class(self, state: str) -> str:
        return TRANSDUCTIVE if state in self.supports_read else INDUCTIVE

    # ---- the catalogue (catalog.py) ---------------------------------------------------------------
    def catalog(self, state: str) -> Catalog:
        return self.catalogue.catalog(state)

    def catalog_rows(self, state: str, tasks: slice, items: Tensor) -> Tensor:
        return self.catalogue.catalog_rows(state, tasks, items)

    def catalog_floors(self, state: str, items: Tensor) -> dict[str, Tensor]:
        return self.catalogue.catalog_floors(state, items)

    def item_rows(self, items: Tensor, user: dict | None = None, factor_fold: int | None = None) -> Tensor:
        return self.catalogue.item_rows(items, user, factor_fold)

    def user_codes(self, features: dict | None = None) -> Tensor:
        return self.catalogue.user_codes(features)

    def item_labels(self) -> tuple[list, list[str]]:
        return list(self.data.item_ids), list(self.data.item_titles)

    def info(self) -> dict:
        raw = self.raw
        out = {"folder": str(self.folder), "files": [str(p) for p in self.source_files],
               "fingerprint": self.data.fingerprint, "ratings": int(len(raw.rating)),
               "users": int(raw.num_users), "items": int(raw.num_items),
               **self.cut_info, "new_item_ratings": float(self.new_item[raw.rating_item].mean()),
               "meta_train_users": int(len(self.pool_users)), "train_ratings": int(len(self.train_ratings)),
               "global_mean": round(self.mu, 4), "states": {}}
        for s, t in self.tasks.items():
            out["states"][s] = {"tasks": int(len(t.users)), "support_ratings": int(t.support_mask.sum()),
                                "query_ratings": int(t.query_mask.sum())}
        if self.small_states:
            out["warnings"] = self.small_states
        return out
