"""Anyone's data made usable: the default new-item cut (a stated share of the ratings on new items), which
rating of a pair rated twice counts, and the one-line warning on a state too small to report."""
from __future__ import annotations

import logging

import numpy as np

from metarec.data.states import MIN_TASKS

log = logging.getLogger(__name__)

# The setting that grows each state: new-item states need more ratings on new items, user states more users.
GROW = {"val": "raise data.split's validation share", "user_cold": "raise data.split's test share",
        "item_cold": "raise data.cut.new_ratings", "val_new": "raise data.cut.new_ratings",
        "user_item_cold": "raise data.cut.new_ratings"}


def share_threshold(values: np.ndarray, rating_items: np.ndarray, share: float) -> tuple[float, float]:
    """The threshold t among the items' distinct values [items] (nan: never new) such that the items with a
    value above t hold the share of all ratings closest to `share`; returns (t, the share they hold)."""
    counts = np.bincount(rating_items, minlength=len(values)).astype(np.float64)
    finite = np.isfinite(values)
    distinct = np.unique(values[finite])
    if len(distinct) == 0:
        return float("nan"), 0.0
    per_value = np.bincount(np.searchsorted(distinct, values[finite]), weights=counts[finite], minlength=len(distinct))
    above = (per_value.sum() - np.cumsum(per_value)) / max(len(rating_items), 1)  # ratings above each distinct value
    j = int(np.argmin(np.abs(above - share)))
    return float(distinct[j]), float(above[j])


def random_items(rating_items: np.ndarray, n_items: int, share: float, seed: int) -> np.ndarray:
    """[items] bool: items drawn in a seeded order until they hold the share of ratings closest to `share`."""
    counts = np.bincount(rating_items, minlength=n_items)
    order = np.random.default_rng([seed, 19]).permutation(n_items)  # the stream data.cut.share draws from
    held = np.cumsum(counts[order]) / max(len(rating_items), 1)
    new = np.zeros(n_items, dtype=bool)
    new[order[:int(np.argmin(np.abs(held - share))) + 1]] = True
    return new


def latest_ratings(user: np.ndarray, item: np.ndarray, stamps: np.ndarray | None, num_items: int) -> np.ndarray:
    """Indices of the ratings to keep, in file order: of a (user, item) pair rated more than once the latest
    in time (the later line on a tie), or the last line where `stamps` is None (no time field)."""
    key = user.astype(np.int64) * max(num_items, 1) + item
    line = np.arange(len(key))
    order = np.lexsort((line, line if stamps is None else np.nan_to_num(stamps, nan=-np.inf), key))
    last = np.ones(len(order), dtype=bool)
    last[:-1] = key[order][1:] != key[order][:-1]
    return np.sort(order[last])


def warn_small(counts: dict[str, int], minimum: int = MIN_TASKS) -> list[str]:
    """One warning line per state with fewer than `minimum` tasks (each logged); the lines themselves."""
    lines = []
    for state, n in counts.items():
        if n < minimum:
            lines.append(f"{state} has {n} tasks, fewer than {minimum}: its mean is noise and a results page refuses "
                         f"it; {GROW[state] + ' or ' if state in GROW else ''}lower data.min_ratings")
            log.warning(lines[-1])
    return lines
