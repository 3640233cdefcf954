"""The cold-start protocol over one rating table (MeLU's, made reproducible): the seeded user split,
each user's tasks per state, the meta-training pool they leave, and fresh training episodes from it.

A task is one user. Users are split at random (seeded) into meta-train / validation / test; the reader
says which items are new. Evaluation states: warm (meta-train users, existing items, held-out query
ratings), user_cold (test users, existing items), item_cold (meta-train users, new items),
user_item_cold (test users, new items), and val (validation users, existing items) for model
selection, with val_new (validation users, new items) beside it for `metarec eval eval.split=val`: a
new-item state that is never a test user (data.val_items adds val_item_cold).

Training ratings: the support sets of the meta-train users' existing-item tasks (MeLU drops every
user outside 13-100 ratings). With data.heavy_users, the meta-train users above data.max_ratings
train too: all their existing-item ratings feed the item statistics, the item factors and the
floors' item biases, and an episode draws a task of MeLU's size from them. The evaluation tasks
are the same either way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from metarec.data import cold_cut, split
from metarec.data.ratings import RatingTable
from metarec.data.split import EvalTasks, pad
from metarec.data.states import STATES
from metarec.errors import UserError
from metarec.tasks import Visible

VAL_STATES = ("val", "val_new", "val_item_cold")  # validation users on existing / new items; held new items
ROLE_STATE = {(0, False): "warm", (0, True): "item_cold", (1, False): "val", (1, True): "val_new",
              (2, False): "user_cold", (2, True): "user_item_cold"}  # (user role, new items?) -> state


@dataclass
class Protocol:
    """The split of one rating table: rating indices everywhere (into the table's ratings)."""

    user_role: np.ndarray  # [users] 0 meta-train, 1 validation, 2 test
    tasks: dict[str, EvalTasks]  # every state's fixed evaluation tasks
    small_states: list[str]  # one warning line per state too small to report
    pool_users: np.ndarray  # [pool] the meta-train users that train
    pool: Tensor  # [pool, P] their training ratings, padded
    pool_mask: Tensor  # [pool, P] float
    pool_len: Tensor  # [pool] long
    pool_flat: Tensor  # the pool's ratings, row by row (a share of its users is a mask over them, not over
    pool_owner: Tensor  # ... the padded pool, which heavy users pad to ~10x the ratings on ml-1m) and each one's row
    train_ratings: np.ndarray  # the pool's ratings, row by row
    mu: float  # their mean rating: the floors' and the models' offset

    def episode(self, n_tasks: int, generator: torch.Generator, query_size: int, max_ratings: int,
                shots: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """support, support_mask, query, query_mask [tasks, n] of fresh episodes from meta-train users'
        existing-item ratings (warm queries excluded). A user above max_ratings (data.heavy_users) trains
        on a random max_ratings of them per episode. A meta-batch holds distinct users: n_tasks above the
        number of meta-train users is refused rather than sampled with replacement."""
        n_users, device = len(self.pool_users), self.pool.device
        if n_tasks > n_users:
            raise UserError(f"trainer.meta_batch_size={n_tasks} is larger than the {n_users} meta-train users: "
                            f"a meta-batch never repeats a user, so use trainer.meta_batch_size<={n_users}")
        users = torch.randperm(n_users, generator=generator)[:n_tasks].to(device)
        pool, mask, length = self.pool[users], self.pool_mask[users], self.pool_len[users]  # [T, P]
        keys = torch.rand(pool.shape, generator=generator).to(device) + (1 - mask) * 2  # padding last
        shuffled = pool.gather(1, keys.argsort(dim=1))
        n_query = torch.clamp(length // 2, max=query_size, min=1)  # [T]
        n_support = (length - n_query).clamp(max=max_ratings - query_size)  # a heavy user's too
        if shots is not None:
            n_support = n_support.clamp(max=shots)
        pos = torch.arange(pool.shape[1], device=device)[None]
        query = shuffled[:, :query_size]
        query_mask = (pos[:, :query_size] < n_query[:, None]).float()
        s_width = int(n_support.max())
        support = shuffled.gather(1, (n_query[:, None] + pos[:, :s_width]).clamp(max=pool.shape[1] - 1))
        return support, (pos[:, :s_width] < n_support[:, None]).float(), query, query_mask

    def visible(self, table: RatingTable, state: str) -> Visible:
        """The ratings `state` shows: "train" the training ratings; any other state its tasks' support
        ratings (never a query)."""
        if state == "train":
            rows = torch.from_numpy(self.train_ratings)
        elif state in self.tasks:
            t = self.tasks[state]
            rows = t.support[t.support_mask.bool()].cpu()
        else:
            raise UserError(f"no state {state!r}: use train or one of {', '.join(self.tasks)}")
        return Visible(torch.from_numpy(table.rating_user)[rows], torch.from_numpy(table.rating_item)[rows],
                       torch.from_numpy(table.rating.astype(np.float64))[rows], rows)


def draw(cfg, table: RatingTable, new_item: np.ndarray, seed: int, device: torch.device,
         test_users: np.ndarray | None = None, cut_info: dict | None = None) -> Protocol:
    """The protocol data.* (ProtocolConfig) describes over `table`, `new_item` [items] (bool) the cold-start
    items, drawn with `seed`; `test_users` [users] (bool): a published test split instead of a seeded one."""
    rng = np.random.default_rng(seed)
    role = split.user_roles(rng.permutation(table.num_users), cfg.split, test_users)
    tasks, pools, pool_users = _user_tasks(cfg, table, new_item, role, rng, seed)
    if not pools:
        _no_training_tasks(cfg, table, new_item, cut_info)
    evals = {s: _eval_tasks(cfg, t, s, device) for s, t in tasks.items()}
    small = cold_cut.warn_small({s: len(t.users) for s, t in evals.items()})  # one line each
    pool, pool_mask = (t.to(device) for t in pad(pools))
    real = pool_mask.bool()
    owner = torch.arange(len(pool), device=device).unsqueeze(1).expand_as(real)[real]
    train_ratings = np.concatenate(pools)
    return Protocol(role, evals, small, np.array(pool_users), pool, pool_mask, pool_mask.sum(1).long(), pool[real],
                    owner, train_ratings, float(table.rating[train_ratings].mean()))


def _user_tasks(cfg, table: RatingTable, new_item: np.ndarray, role: np.ndarray, rng: np.random.Generator,
                seed: int) -> tuple[dict[str, list], list[np.ndarray], list[int]]:
    """Each user's ratings on existing and on new items, a task each in the state of the user's role
    ((user, support, query) lists), and the meta-training pool (rating lists and their users)."""
    is_new = new_item[table.rating_item]
    held = split.held_new_items(new_item, cfg.val_items, seed)
    order = np.lexsort((np.arange(len(table.rating_user)), is_new, table.rating_user))
    q, lo, hi = cfg.query_size, cfg.min_ratings, cfg.max_ratings
    tasks: dict[str, list] = {s: [] for s in (*STATES, *VAL_STATES)}
    pools, pool_users = [], []
    # Ratings grouped by (user, new?) in a stable order; a seeded shuffle picks the query.
    keys = table.rating_user[order] * 2 + is_new[order]
    for group in np.split(order, np.flatnonzero(np.diff(keys)) + 1):
        if len(group) == 0:
            continue
        user, new = int(table.rating_user[group[0]]), bool(is_new[group[0]])
        if cfg.heavy_users and role[user] == 0 and not new and len(group) > hi:
            pools.append(group)  # no task of its own: every rating trains (an episode caps the support)
            pool_users.append(user)
            continue
        if not lo <= len(group) <= hi or len(group) <= q:
            continue
        group = rng.permutation(group)
        query, support = group[:q], group[q:]
        r = role[user]
        if r == 0 and new and held is not None:  # the held-out items' ratings leave item_cold for val_item_cold
            on_held = held[table.rating_item[group]]
            rest, part = group[~on_held], group[on_held]
            if len(rest) > q:
                tasks["item_cold"].append((user, rest[q:], rest[:q]))
            if len(part) >= 2:  # a validation task: up to half its ratings (at most query_size) are the query
                tasks["val_item_cold"].append((user, part[min(q, len(part) // 2):], part[:min(q, len(part) // 2)]))
            continue
        tasks[ROLE_STATE[(r, new)]].append((user, support, query))
        if r == 0 and not new:
            pools.append(support)  # warm queries are held out of training for good
            pool_users.append(user)
    if held is None:
        del tasks["val_item_cold"]
    return tasks, pools, pool_users


def _no_training_tasks(cfg, table: RatingTable, new_item: np.ndarray, cut_info: dict | None) -> None:
    """No meta-train user kept a task: say whether the cut or the filter left nothing to train on."""
    lo, hi, existing = cfg.min_ratings, cfg.max_ratings, int((~new_item[table.rating_item]).sum())
    if existing < 0.05 * len(table.rating_item):
        raise UserError(f"only {existing:,} of {len(table.rating_item):,} ratings are on existing items (the cut "
                        f"{cut_info} makes almost every item new): no meta-train user has {lo}-{hi} of them; "
                        f"move the cut (data.cut_year, or data.cut for data=atomic)")
    raise UserError(f"no meta-train user has {lo}-{hi} ratings on existing items "
                    f"(data.min_ratings / data.max_ratings / data.query_size): loosen the filter")


def _eval_tasks(cfg, tasks: list, state: str, device: torch.device) -> EvalTasks:
    """A state's (user, support, query) lists as padded rating indices; data.shots keeps the first shots
    support ratings of each user who has that many."""
    shots = cfg.shots
    if shots is not None:
        kept = [(u, s[:shots], qy) for u, s, qy in tasks if len(s) >= shots]
        if tasks and not kept:
            most = max(len(s) for _, s, _ in tasks)
            raise UserError(f"data.shots={shots} is larger than any {state} user has "
                            f"(at most {most} support ratings): use data.shots<={most}")
        tasks = kept
    users = np.array([u for u, _, _ in tasks], dtype=np.int64)
    s, sm = pad([t[1] for t in tasks])
    qy, qm = pad([t[2] for t in tasks], cfg.query_size)
    return EvalTasks(users, s.to(device), sm.to(device), qy.to(device), qm.to(device))
