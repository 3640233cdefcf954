"""Each rating's model input, and the task batches of padded rating rows. A rating's row x is its user's
and its item's encoded features (features.Features.rows), then the side inputs that data.* switch on:
the item factors' row (data.item_factors, factors.py) or the transductive side table's
(data.transductive, transductive.py) in a last column, and the two item-context codes after the first
n_base columns (data.item_stats, item_context.py), which a batch adds per state or per episode."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from metarec.data import transductive
from metarec.data.factors import factor_rows
from metarec.data.item_context import FIELDS, ItemContext
from metarec.data.protocol import Protocol
from metarec.data.ratings import RatingData
from metarec.tasks import TaskBatch


class InputRows:
    """The inputs of one source's ratings: x [ratings, F], y [ratings], and what a batch adds."""

    def __init__(self, cfg, data: RatingData, protocol: Protocol, device: torch.device, seed: int, unit: float):
        """unit: the scale's span over 1-5's, which stretches the side inputs' ridge penalties (squared
        rating units); seed: the split's, which the side inputs' own streams start from."""
        table, features = data.table, data.features
        self.cfg, self.device, self.n_train = cfg, device, len(protocol.train_ratings)
        self.fields, self.multi_hot, self.n_base = list(features.fields), features.multi_hot, features.n_base
        self.sides = features.sides  # the user's and the item's content fields, by name (MeLU's encoder reads them)
        self.x = torch.from_numpy(features.rows(table.rating_user, table.rating_item)).to(device)  # [ratings, F]
        self.y = torch.from_numpy(table.rating.astype(np.float32)).to(device)  # [ratings]
        self.rating_item = torch.from_numpy(table.rating_item).to(device)
        self.factor_table: Tensor | None = None  # [rows, width]: the table the last input column indexes
        if cfg.item_factors:
            self.factor_table, row = factor_rows(
                table.rating_user, table.rating_item, table.rating, table.num_users, table.num_items,
                protocol.pool_users, protocol.train_ratings, protocol.mu, cfg.item_factors, cfg.factor_reg * unit,
                cfg.factor_folds, seed)
            self.x = torch.cat([self.x, torch.from_numpy(row).to(device).unsqueeze(1)], dim=1)
        self.trans_rows: dict[str, Tensor] | None = None  # data.transductive: each rating's row in the side table
        self.trans_blocks = 1  # training's blocks in it (data.trans_shares)
        if cfg.transductive:
            self._side_table(data, protocol, transductive.TransSettings.of(cfg, unit), seed)
        self.context: ItemContext | None = None
        if cfg.item_stats:
            self.fields = self.fields[: self.n_base] + FIELDS + self.fields[self.n_base:]
            self.context = ItemContext(self.y, torch.from_numpy(table.rating_user).to(device), self.rating_item,
                                       table.num_users, table.num_items, protocol, data.rating_scale,
                                       cfg.item_stats_transductive)

    def _side_table(self, data: RatingData, protocol: Protocol, settings: transductive.TransSettings,
                    seed: int) -> None:
        """The exact transductive context as float columns of the side table that the last input column
        indexes (after the item factors' columns when there are some)."""
        has_factors = self.factor_table is not None
        sources = transductive.Sources(data.table, protocol, self.factor_table, self.x[:, -1] if has_factors else None,
                                       self.device)
        self.factor_table, self.trans_rows = transductive.side_table(sources, settings, seed)
        self.trans_blocks = len(settings.shares)
        if not has_factors:  # a last column of its own; with item factors it takes theirs over
            self.x = torch.cat([self.x, self.x.new_zeros(len(self.x), 1)], dim=1)

    def batch(self, support: Tensor, support_mask: Tensor, query: Tensor, query_mask: Tensor,
              generator: torch.Generator | None = None, context: str = "train") -> TaskBatch:
        """The model inputs of padded rating rows (a user's, or an item's as algos/item_tasks.py builds):
        the item context of `context` (redrawn per episode for "train" with a generator), item-id dropout."""
        sx, qx = self.x[support], self.x[query]
        if self.trans_rows is not None:  # the transductive context's row: training's or the state's own
            lookup = self.trans_rows["train" if context == "train" else "eval"]
            sx[..., -1], qx[..., -1] = lookup[support], lookup[query]
            if context == "train" and generator is not None and self.trans_blocks > 1:  # a training block per task
                shift = (torch.randint(self.trans_blocks, (len(support), 1), generator=generator)
                         * self.n_train).to(self.device)
                for x in (sx, qx):
                    x[..., -1] = torch.where(x[..., -1] > 0, x[..., -1] + shift, x[..., -1])
        if self.context is not None:
            ctx = (self.context.episode(torch.cat([support.flatten(), query.flatten()]), generator)
                   if context == "train" and generator is not None else self.context.tables[context])
            b = self.n_base
            sx = torch.cat([sx[..., :b], ctx[support], sx[..., b:]], -1)
            qx = torch.cat([qx[..., :b], ctx[query], qx[..., b:]], -1)
        if generator is not None and self.cfg.item_ids and self.cfg.item_id_dropout > 0:
            col = len(self.fields) - 1  # item ids are the last categorical field
            for x in (sx, qx):
                drop = torch.rand(x.shape[:2], generator=generator).to(self.device) < self.cfg.item_id_dropout
                x[..., col] = torch.where(drop, torch.zeros_like(x[..., col]), x[..., col])
        return TaskBatch(sx, self.y[support], support_mask, qx, self.y[query], query_mask)
