"""The protocol's seeded draws over users and new items, and the padded task lists they produce."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def user_roles(perm: np.ndarray, split: Sequence[float], test_users: np.ndarray | None = None) -> np.ndarray:
    """[users] 0 meta-train, 1 validation, 2 test: the seeded permutation `perm` cut at the rounded
    cumulative shares of `split` (splits with the same test share, 0.7/0.1/0.2 and 0.6/0.2/0.2, hold out
    the same test users). With `test_users` [users] (bool: data=atomic's data.test_user_field) those are
    the test users, and the others are cut by the first two shares."""
    if test_users is not None:
        rest = perm[~test_users[perm]]
        n_train = int(round(split[0] / (split[0] + split[1]) * len(rest)))
        role = np.full(len(perm), 2, dtype=np.int64)
        role[rest[:n_train]], role[rest[n_train:]] = 0, 1
        return role
    n_users = len(perm)
    n_train = int(round(split[0] * n_users))
    n_val = int(round((split[0] + split[1]) * n_users)) - n_train
    role = np.empty(n_users, dtype=np.int64)
    role[perm[:n_train]], role[perm[n_train:n_train + n_val]], role[perm[n_train + n_val:]] = 0, 1, 2
    return role


def held_new_items(new_item: np.ndarray, share: float, seed: int) -> np.ndarray | None:
    """data.val_items: a seeded `share` of the new items, [items] bool, whose meta-train users' ratings form
    val_item_cold (item_cold's validation state); None when the share is 0 (MeLU's item_cold). The split cuts
    a kept new-item partition by item after its shuffle, so its draws and every other state stay as without it."""
    if share <= 0:
        return None
    new_items = np.flatnonzero(new_item)
    chosen = np.random.default_rng([seed, 36]).permutation(new_items)[: int(round(share * len(new_items)))]
    held = np.zeros(len(new_item), dtype=bool)
    held[chosen] = True
    return held


def pad(rows: list[np.ndarray], width: int | None = None) -> tuple[Tensor, Tensor]:
    """Ragged index lists -> padded [n, width] long tensor (pad 0) and float mask."""
    width = width if width is not None else max((len(r) for r in rows), default=1)
    width = max(width, 1)
    index = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.float32)
    for i, r in enumerate(rows):
        index[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return torch.from_numpy(index), torch.from_numpy(mask)


@dataclass
class EvalTasks:
    users: np.ndarray  # [tasks] user row
    support: Tensor  # [tasks, S] rating index, padded
    support_mask: Tensor
    query: Tensor  # [tasks, Q]
    query_mask: Tensor
