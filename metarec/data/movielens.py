"""MovieLens as cold-start tasks (MeLU's protocol, made reproducible): features, splits, episodes.

A task is one user. Users are split at random (seeded) into meta-train / validation / test; items
released up to a cut year are "existing", later ones "new". Evaluation states:
warm (meta-train users, existing items, held-out query ratings), user_cold (test users, existing
items), item_cold (meta-train users, new items), user_item_cold (test users, new items), and val
(validation users, existing items) for model selection, with val_new (validation users, new items)
beside it for `metarec eval eval.split=val`: a new-item state that is never a test user.

Training ratings: the support sets of the meta-train users' existing-item tasks (MeLU drops every
user outside 13-100 ratings). With data.heavy_users, the meta-train users above data.max_ratings
train too: all their existing-item ratings feed the item statistics, the item factors and the
floors' item biases, and an episode draws a task of MeLU's size from them. The evaluation tasks
are the same either way.

The protocol itself (`MovieLensTasks._build` and below) reads only a generic rating table, each
rating's feature input and which items are new (metarec/data/features.py): data=atomic
(metarec/data/atomic.py) runs it on any RecBole atomic data set.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from metarec.data import cold_cut, floor_cache, mf_floors, split, transductive
from metarec.data.split import EvalTasks, pad as _pad
from metarec.data.cache_check import fingerprint
from metarec.data.download import locate_movielens
from metarec.data.movielens_catalog import CatalogRows
from metarec.data.factors import ITEM_BIAS_PRECISION, USER_BIAS_PRECISION, cross_fitted
from metarec.data.features import Features
from metarec.data.ratings import RatingTable
from metarec.data.item_context import BIAS_EDGES, COUNT_EDGES, ItemContext
from metarec.data.movielens_features import rating_features
from metarec.data.movielens_io import RATING_MAX, RATING_MIN, read_movielens
from metarec.errors import UserError
from metarec.data.states import CUT_YEAR, STATES
from metarec.tasks import INDUCTIVE, TRANSDUCTIVE, TaskBatch, TaskSource

VAL_STATES = ("val", "val_new", "val_item_cold")  # validation users on existing / new items; _held_new_items


class MovieLensTasks(CatalogRows, ItemContext, TaskSource):
    """TaskSource over one MovieLens copy (or, through _build, any rating table): the whole set lives as
    tensors on `device`."""

    kind = "rating"

    def __init__(self, cfg, device: torch.device | str = "cpu", seed: int = 0, progress: bool = True):
        if cfg.variant not in CUT_YEAR:
            raise UserError(f"data.variant={cfg.variant!r} is not known: use ml-100k or ml-1m")
        self.folder = locate_movielens(cfg.variant, cfg.root, cfg.cache_dir, progress=progress)
        raw = read_movielens(self.folder)
        self.cut = cfg.cut_year if cfg.cut_year is not None else CUT_YEAR[cfg.variant]
        self.cut_info = {"cut_year": self.cut}
        self.rating_scale = (RATING_MIN, RATING_MAX)  # (lowest, highest): every reader refuses a rating off it
        features = rating_features(raw, self.cut, cfg.item_ids, cfg.zip_prefix)
        self.genres = features.names["genre"]
        self._build(cfg, device, seed, raw, features, raw.item_year > self.cut)  # unknown year counts as existing

    def _build(self, cfg, device, seed: int, raw: RatingTable, features: Features, new_item: np.ndarray) -> None:
        """The protocol over any rating table: `features` give each rating's input, `new_item` [items]
        (bool) the cold-start items. MovieLens' reader above and data=atomic (atomic.py) call it."""
        self.cfg, self.device = cfg, torch.device(device)
        self.raw, self.features, self.new_item = raw, features, new_item
        self.source_files = [Path(p) for p in raw.source_files]
        self.data_fingerprint = fingerprint(self.source_files)
        self.fields, self.multi_hot = list(features.fields), features.multi_hot
        self.x = torch.from_numpy(features.rows(raw.rating_user, raw.rating_item)).to(self.device)  # [ratings, F]
        self.y = torch.from_numpy(raw.rating.astype(np.float32)).to(self.device)  # [ratings]
        split_seed = seed if cfg.split_seed is None else cfg.split_seed
        self._split(split_seed)
        self.factor_table = None
        # the factors' ridge penalties are in squared rating units: stretched with the scale's span over 1-5's
        # (the biases' precisions count ratings and need nothing); MovieLens' are unchanged
        self.rating_unit = (self.rating_scale[1] - self.rating_scale[0]) / 4
        settings = mf_floors.MFSettings.of(cfg)  # checked here, before any training
        unit = self.rating_unit
        self.mf_settings = replace(settings, reg=settings.reg * unit, foldin_reg=settings.foldin_reg * unit,
                                   transductive_reg=settings.transductive_reg * unit)
        self._mf: mf_floors.MFFloors | None = None  # the MF floors' training fit, made when first asked for
        if cfg.item_factors:
            self._item_factors(split_seed)
        self.supports_read: set[str] = set()  # states whose evaluation inputs counted their support sets
        self.trans_rows: dict[str, Tensor] | None = None  # data.transductive: each rating's row in the side table
        if cfg.transductive:
            settings = transductive.TransSettings.of(cfg)  # its factors' penalty in squared rating units, as the floors'
            self._transductive(replace(settings, reg=settings.reg * self.rating_unit), split_seed)
        self.n_base = features.n_base  # user and item fields: item context goes after them, item ids last
        if cfg.item_stats:
            self.fields = (self.fields[: self.n_base] + [("item_bias", len(BIAS_EDGES) + 2), ("item_count", len(COUNT_EDGES) + 2)]
                           + self.fields[self.n_base:])
            self.item_context = self._item_context()

    def input_rows(self, users: np.ndarray, items: np.ndarray) -> Tensor:
        """The feature input x of each (user row, item row) pair [n, F], as self.x holds it for a rating:
        without the item-context columns (data.item_stats, added per state in rows_batch) or the factor
        column (data.item_factors)."""
        return torch.from_numpy(self.features.rows(np.asarray(users), np.asarray(items))).to(self.device)

    @classmethod
    def from_config(cls, cfg, device: torch.device, seed: int = 0, progress: bool = True) -> "MovieLensTasks":
        return cls(cfg, device, seed, progress=progress)

    def fingerprint(self) -> str:
        return self.data_fingerprint

    # ---- the protocol -------------------------------------------------------------------------
    def _split(self, seed: int) -> None:
        cfg, raw = self.cfg, self.raw
        if len(cfg.split) != 3 or min(cfg.split) < 0 or abs(sum(cfg.split) - 1) > 1e-6:
            raise UserError(f"data.split={list(cfg.split)} must be three shares (train, val, test) that sum to 1")
        rng = np.random.default_rng(seed)
        self.user_role = role = self._user_roles(rng.permutation(raw.num_users))

        is_new = self.new_item[raw.rating_item]
        held = split.held_new_items(self.new_item, self.cfg.val_items, seed)
        order = np.lexsort((np.arange(len(raw.rating_user)), is_new, raw.rating_user))
        q = cfg.query_size
        tasks: dict[str, list] = {s: [] for s in (*STATES, *VAL_STATES)}
        pools, pool_users = [], []
        lo, hi = cfg.min_ratings, cfg.max_ratings
        if q < 1:
            raise UserError(f"data.query_size={q} must be at least 1")
        # Ratings grouped by (user, new?) in a stable order; a seeded shuffle picks the query.
        keys = raw.rating_user[order] * 2 + is_new[order]
        bounds = np.flatnonzero(np.diff(keys)) + 1
        for group in np.split(order, bounds):
            if len(group) == 0:
                continue
            user, new = int(raw.rating_user[group[0]]), bool(is_new[group[0]])
            if cfg.heavy_users and role[user] == 0 and not new and len(group) > hi:
                pools.append(group)  # no task of its own: every rating trains (sample_train caps the support)
                pool_users.append(user)
                continue
            if not lo <= len(group) <= hi or len(group) <= q:
                continue
            group = rng.permutation(group)
            query, support = group[:q], group[q:]
            r = role[user]
            if r == 0 and new and held is not None:  # the held-out items' ratings leave item_cold for val_item_cold
                on_held = held[raw.rating_item[group]]
                rest, part = group[~on_held], group[on_held]
                if len(rest) > q:
                    tasks["item_cold"].append((user, rest[q:], rest[:q]))
                if len(part) >= 2:  # a validation task: up to half its ratings (at most query_size) are the query
                    tasks["val_item_cold"].append((user, part[min(q, len(part) // 2):], part[:min(q, len(part) // 2)]))
                continue
            state = {(0, False): "warm", (0, True): "item_cold", (1, False): "val", (1, True): "val_new",
                     (2, False): "user_cold", (2, True): "user_item_cold"}[(r, new)]
            tasks[state].append((user, support, query))
            if r == 0 and not new:
                pools.append(support)  # warm queries are held out of training for good
                pool_users.append(user)
        if not pools:
            self._no_training_tasks(lo, hi)
        self.tasks = {s: self._eval_tasks(t, s) for s, t in tasks.items() if s != "val_item_cold" or held is not None}
        self.small_states = cold_cut.warn_small({s: len(t.users) for s, t in self.tasks.items()})  # one line each
        self.pool_users = np.array(pool_users)
        self.pool, self.pool_mask = (t.to(self.device) for t in _pad(pools))
        self.pool_len = self.pool_mask.sum(1).long()
        train_idx = np.concatenate(pools)
        self.train_ratings = train_idx
        self.mu = float(raw.rating[train_idx].mean())
        self._item_bias(train_idx)

    def _no_training_tasks(self, lo: int, hi: int) -> None:
        """No meta-train user kept a task: say whether the cut or the filter left nothing to train on."""
        rating_item = self.raw.rating_item
        existing = int((~self.new_item[rating_item]).sum())
        if existing < 0.05 * len(rating_item):
            raise UserError(f"only {existing:,} of {len(rating_item):,} ratings are on existing items (the cut "
                            f"{self.cut_info} makes almost every item new): no meta-train user has {lo}-{hi} of them; "
                            f"move the cut (data.cut_year, or data.cut for data=atomic)")
        raise UserError(f"no meta-train user has {lo}-{hi} ratings on existing items "
                        f"(data.min_ratings / data.max_ratings / data.query_size): loosen the filter")

    def _user_roles(self, perm: np.ndarray) -> np.ndarray:
        """[users] 0 meta-train, 1 validation, 2 test (data=atomic's data.test_user_field overrides it)."""
        return split.user_roles(perm, self.cfg.split)

    def _eval_tasks(self, tasks: list, state: str) -> EvalTasks:
        shots = self.cfg.shots
        if shots is not None:
            if shots < 1:
                raise UserError(f"data.shots={shots} must be at least 1 (or null for all the rest)")
            kept = [(u, s[:shots], qy) for u, s, qy in tasks if len(s) >= shots]
            if tasks and not kept:
                most = max(len(s) for _, s, _ in tasks)
                raise UserError(f"data.shots={shots} is larger than any {state} user has "
                                f"(at most {most} support ratings): use data.shots<={most}")
            tasks = kept
        users = np.array([u for u, _, _ in tasks], dtype=np.int64)
        s, sm = _pad([t[1] for t in tasks])
        qy, qm = _pad([t[2] for t in tasks], self.cfg.query_size)
        return EvalTasks(users, s.to(self.device), sm.to(self.device), qy.to(self.device), qm.to(self.device))

    def _item_bias(self, train_idx: np.ndarray, shrink: float = ITEM_BIAS_PRECISION) -> None:
        """Item biases from training ratings, shrunk towards 0 (for the bias floor)."""
        n_items = self.raw.num_items
        resid = self.raw.rating[train_idx] - self.mu
        items = self.raw.rating_item[train_idx]
        total = np.bincount(items, weights=resid, minlength=n_items)
        count = np.bincount(items, minlength=n_items)
        self.item_total = torch.from_numpy(total.astype(np.float32)).to(self.device)
        self.item_count = torch.from_numpy(count.astype(np.float32)).to(self.device)
        self.bias_shrink = shrink
        self.item_bias = self.item_total / (self.item_count + shrink)
        self.rating_item = torch.from_numpy(self.raw.rating_item).to(self.device)

    def _item_factors(self, seed: int) -> None:
        """Cross-fitted collaborative item factors (metarec/data/factors.py): one table
        row per (fold, item), and a last input column naming each rating's row (0 = none)."""
        cfg, raw = self.cfg, self.raw
        if cfg.item_factors < 0 or cfg.factor_folds < 2 or cfg.factor_reg <= 0:
            raise UserError(f"data.item_factors={cfg.item_factors}, data.factor_folds={cfg.factor_folds} and "
                            f"data.factor_reg={cfg.factor_reg} must be >= 0, >= 2 and > 0")
        n_users, n_items, folds = raw.num_users, raw.num_items, cfg.factor_folds
        fold = np.full(n_users, folds, dtype=np.int64)  # everyone outside the pool reads the full fit
        deal = np.random.default_rng([seed, 7])  # a stream of its own: the split's draws stay as they were
        fold[self.pool_users] = deal.permutation(len(self.pool_users)) % folds
        tr = self.train_ratings
        tables = cross_fitted(torch.from_numpy(raw.rating_user[tr]), torch.from_numpy(raw.rating_item[tr]),
                              torch.from_numpy(raw.rating[tr].astype(np.float64)), n_users, n_items, self.mu,
                              torch.from_numpy(fold), folds, cfg.item_factors, cfg.factor_reg * self.rating_unit, seed=seed)
        flat = tables.flatten(0, 1).float()
        self.factor_table = torch.cat([flat.new_zeros(1, flat.shape[1]), flat])  # row 0: no factors
        row = 1 + fold[raw.rating_user] * n_items + raw.rating_item
        self.x = torch.cat([self.x, torch.from_numpy(row).to(self.device).unsqueeze(1)], dim=1)

    def _transductive(self, settings: transductive.TransSettings, seed: int) -> None:
        """The exact transductive context (metarec/data/transductive.py) as float columns of the side
        table that the last input column indexes (after the item factors' columns when there are some)."""
        self.factor_table, self.trans_rows = transductive.side_table(self, settings, seed)
        self.trans_blocks = len(settings.shares)  # training's blocks in it (data.trans_shares)
        if not self.cfg.item_factors:  # a last column of its own; with item factors it takes theirs over
            self.x = torch.cat([self.x, self.x.new_zeros(len(self.x), 1)], dim=1)

    def visible(self, state: str) -> transductive.Visible:
        """The ratings `state` shows (the hook of the exact transductive input): "train" the meta-train
        ratings; any other state its tasks' support ratings (never a query), which makes what is predicted
        there transductive (recorded: input_class)."""
        if state == "train":
            rows = torch.from_numpy(self.train_ratings)
        elif state in self.tasks:
            self.supports_read.add(state)
            t = self.tasks[state]
            rows = t.support[t.support_mask.bool()].cpu()
        else:
            raise UserError(f"no state {state!r}: use train or one of {', '.join(self.tasks)}")
        raw = self.raw
        return transductive.Visible(torch.from_numpy(raw.rating_user)[rows], torch.from_numpy(raw.rating_item)[rows],
                                    torch.from_numpy(raw.rating.astype(np.float64))[rows], rows)

    # ---- TaskSource -----------------------------------------------------------------------------
    def model_spec(self) -> dict:
        blocks = [list(b) for b in self.multi_hot]  # one block: the [name, width] pair MovieLens has always written
        spec = {"fields": [list(f) for f in self.fields], "multi_hot": blocks[0] if len(blocks) == 1 else blocks,
                "offset": self.mu}
        if self.factor_table is not None:
            spec["factors"] = self.factor_table  # [rows, rank], read through the input's last column
        return spec

    def sample_train(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        """Fresh episodes from meta-train users' existing-item ratings (warm queries excluded). With
        data.heavy_users a user above data.max_ratings trains on a random max_ratings of them per episode.
        A meta-batch holds distinct users: a trainer.meta_batch_size above the number of meta-train
        users is refused rather than sampled with replacement, so no user counts twice in one step."""
        n_users = len(self.pool_users)
        if n_tasks > n_users:
            raise UserError(f"trainer.meta_batch_size={n_tasks} is larger than the {n_users} meta-train users: "
                            f"a meta-batch never repeats a user, so use trainer.meta_batch_size<={n_users}")
        users = torch.randperm(n_users, generator=generator)[:n_tasks].to(self.device)
        pool, mask, length = self.pool[users], self.pool_mask[users], self.pool_len[users]  # [T, P]
        keys = torch.rand(pool.shape, generator=generator).to(self.device) + (1 - mask) * 2  # padding last
        perm = keys.argsort(dim=1)
        shuffled = pool.gather(1, perm)
        n_query = torch.clamp(length // 2, max=self.cfg.query_size, min=1)  # [T]
        n_support = (length - n_query).clamp(max=self.cfg.max_ratings - self.cfg.query_size)  # a heavy user's too
        if self.cfg.shots is not None:
            n_support = n_support.clamp(max=self.cfg.shots)
        pos = torch.arange(pool.shape[1], device=self.device)[None]
        q_width = self.cfg.query_size
        query = shuffled[:, :q_width]
        query_mask = (pos[:, :q_width] < n_query[:, None]).float()
        s_width = int(n_support.max())
        s_pos = (n_query[:, None] + pos[:, :s_width]).clamp(max=pool.shape[1] - 1)
        support = shuffled.gather(1, s_pos)
        support_mask = (pos[:, :s_width] < n_support[:, None]).float()
        return self.rows_batch(support, support_mask, query, query_mask, generator)

    def rows_batch(self, support, support_mask, query, query_mask, generator=None, context: str = "train") -> TaskBatch:
        """The model inputs of padded rating rows (a user's, or an item's as algos/item_tasks.py builds):
        the item context of `context` (redrawn per episode for "train" with a generator), item-id dropout."""
        sx, qx = self.x[support], self.x[query]
        if self.trans_rows is not None:  # the transductive context's row: training's or the state's own
            lookup = self.trans_rows["train" if context == "train" else "eval"]
            sx[..., -1], qx[..., -1] = lookup[support], lookup[query]
            if context == "train" and generator is not None and self.trans_blocks > 1:  # a training block per task
                shift = (torch.randint(self.trans_blocks, (len(support), 1), generator=generator)
                         * len(self.train_ratings)).to(self.device)
                for x in (sx, qx):
                    x[..., -1] = torch.where(x[..., -1] > 0, x[..., -1] + shift, x[..., -1])
        if self.cfg.item_stats:
            ctx = (self._train_context(torch.cat([support.flatten(), query.flatten()]), generator)
                   if context == "train" and generator is not None else self.item_context[context])
            b = self.n_base
            sx = torch.cat([sx[..., :b], ctx[support], sx[..., b:]], -1)
            qx = torch.cat([qx[..., :b], ctx[query], qx[..., b:]], -1)
        if generator is not None and self.cfg.item_ids and self.cfg.item_id_dropout > 0:
            col = len(self.fields) - 1  # item ids are the last categorical field
            for x in (sx, qx):
                drop = torch.rand(x.shape[:2], generator=generator).to(self.device) < self.cfg.item_id_dropout
                x[..., col] = torch.where(drop, torch.zeros_like(x[..., col]), x[..., col])
        return TaskBatch(sx, self.y[support], support_mask, qx, self.y[query], query_mask)

    def eval_tasks(self, split: str) -> dict[str, TaskBatch]:
        states = VAL_STATES if split == "val" else STATES
        out = {}
        for s in states:
            t = self.tasks.get(s)
            if t is not None and len(t.users):
                out[s] = self.rows_batch(t.support, t.support_mask, t.query, t.query_mask, context=s)
        return out

    def floors(self, state: str) -> dict[str, Tensor]:
        """Query predictions of the non-learned floors on the same tasks: [tasks, Q] each."""
        t = self.tasks[state]
        yq, b_qi = self.y[t.query], self.item_bias[self.rating_item[t.query]]
        ys, user_bias = self._user_bias(t)
        n_s = t.support_mask.sum(1, keepdim=True).clamp(min=1)
        user_mean = ys.sum(1, keepdim=True) / n_s
        b_t, _ = self._transductive_item_bias(t)
        b_ts, b_tq = b_t[self.rating_item[t.support]], b_t[self.rating_item[t.query]]
        user_bias_t = ((ys - (self.mu + b_ts) * t.support_mask).sum(1, keepdim=True)) / (n_s + USER_BIAS_PRECISION)
        return {
            "global_mean": torch.full_like(yq, self.mu),
            "user_mean": user_mean.expand_as(yq),
            "bias": self.mu + user_bias + b_qi,
            "bias_transductive": self.mu + user_bias_t + b_tq,
            **self._mf_floors(t),
        }

    def input_class(self, state: str) -> str:
        return TRANSDUCTIVE if state in self.supports_read else INDUCTIVE

    def floor_classes(self) -> dict[str, str]:
        """bias_transductive pools every support set of the state (_transductive_item_bias), mf_transductive
        factorises them jointly (mf_floors.transductive_floor); the rest read training ratings and the
        task's own support set."""
        return {name: TRANSDUCTIVE if name in ("bias_transductive", "mf_transductive") else INDUCTIVE
                for name in ("global_mean", "user_mean", "bias", "bias_transductive", "mf_foldin", "mf_transductive")}

    def _user_bias(self, t: EvalTasks) -> tuple[Tensor, Tensor]:
        """Support ratings [tasks, S] (0 at padding) and the bias floor's user bias [tasks, 1]."""
        ys = self.y[t.support] * t.support_mask
        n_s = t.support_mask.sum(1, keepdim=True).clamp(min=1)
        b_si = self.item_bias[self.rating_item[t.support]]
        return ys, ((ys - (self.mu + b_si) * t.support_mask).sum(1, keepdim=True)) / (n_s + USER_BIAS_PRECISION)

    def _transductive_item_bias(self, t: EvalTasks) -> tuple[Tensor, Tensor]:
        """bias_transductive's item biases [items] and the counts they rest on: item residuals pooled from
        training ratings and every support set of the tasks t (never a query), so new items get a bias
        from other users' support ratings."""
        ys, user_bias = self._user_bias(t)
        items = self.rating_item[t.support].flatten()
        resid = ((ys - (self.mu + user_bias) * t.support_mask) * t.support_mask).flatten()
        total = self.item_total.index_add(0, items, resid)
        count = self.item_count.index_add(0, items, t.support_mask.flatten())
        return total / (count + self.bias_shrink), count

    def _mf_floors(self, t: EvalTasks) -> dict[str, Tensor]:
        """mf_foldin and mf_transductive (metarec/data/mf_floors.py) on the tasks t: [tasks, Q] each."""
        def compute() -> dict[str, Tensor]:
            if self._mf is None:  # the factorisation of the training ratings, once, and only on a cache miss
                self._mf = mf_floors.MFFloors(self.mf_settings, self.raw, self.train_ratings, self.mu)
            return self._mf(t.support, t.support_mask, t.query)

        k = floor_cache.key(self.data_fingerprint, self.train_ratings, t.support, t.support_mask, t.query, self.mu,
                            self.mf_settings)
        return {name: pred.to(self.y) for name, pred in floor_cache.cached(k, tuple(t.query.shape), compute).items()}

    def info(self) -> dict:
        out = {"folder": str(self.folder), "files": [str(p) for p in self.source_files],
               "fingerprint": self.data_fingerprint, "ratings": int(len(self.raw.rating)),
               "users": int(self.raw.num_users), "items": int(self.raw.num_items),
               **self.cut_info, "new_item_ratings": float(self.new_item[self.raw.rating_item].mean()),
               "meta_train_users": int(len(self.pool_users)), "train_ratings": int(len(self.train_ratings)),
               "global_mean": round(self.mu, 4), "states": {}}
        for s, t in self.tasks.items():
            out["states"][s] = {"tasks": int(len(t.users)), "support_ratings": int(t.support_mask.sum()),
                                "query_ratings": int(t.query_mask.sum())}
        if self.small_states:
            out["warnings"] = self.small_states
        return out
