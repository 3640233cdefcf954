"""MovieLens tasks on the real ml-100k: what trains and what is held out, with and without the
meta-train users above data.max_ratings (data.heavy_users)."""
import numpy as np
import pytest
import torch
from conftest import ML100K, needs_ml100k


def source_of(*overrides):
    from metarec.config.compose import compose
    from metarec.run.train import build_source
    # MeLU's 70/10/20 split without heavy users unless asked (the defaults before algo=maml data=movielens took the tuned preset's)
    pinned = [p for p in ("data.split=[0.7,0.1,0.2]", "data.heavy_users=false") if not any(o.startswith(p.split("=")[0]) for o in overrides)]
    cfg = compose(["data=movielens", f"data.root={ML100K}", *pinned, *overrides]).data
    return build_source(cfg, torch.device("cpu"), 0, progress=False)


def rows(t, part):
    index, mask = getattr(t, part), getattr(t, f"{part}_mask")
    return set(index[mask.bool()].tolist())


@needs_ml100k()
def test_heavy_users_train_and_the_tasks_stay_melus():
    melu, heavy = source_of(), source_of("data.heavy_users=true")
    raw = melu.raw
    for state, t in melu.tasks.items():  # the same users, support and query ratings in every state
        h = heavy.tasks[state]
        assert np.array_equal(t.users, h.users), state
        for part in ("support", "support_mask", "query", "query_mask"):
            assert torch.equal(getattr(t, part), getattr(h, part)), (state, part)

    existing = raw.item_year[raw.rating_item] <= melu.cut
    warm_queries = rows(melu.tasks["warm"], "query")
    counts = np.bincount(raw.rating_user[existing], minlength=len(raw.user_gender))
    meta_train = np.flatnonzero(melu.user_role == 0)
    added = set(heavy.pool_users.tolist()) - set(melu.pool_users.tolist())
    assert set(melu.pool_users.tolist()) < set(heavy.pool_users.tolist())
    assert added == {int(u) for u in meta_train if counts[u] > melu.cfg.max_ratings} and len(added) > 150
    # Every rating of theirs on an existing item trains; nothing of a validation or test user, no new
    # item and no warm query ever does.
    train, melu_train = set(heavy.train_ratings.tolist()), set(melu.train_ratings.tolist())
    of_added = np.isin(raw.rating_user, list(added)) & existing
    assert train == melu_train | set(np.flatnonzero(of_added).tolist())
    assert not train & warm_queries and not melu_train & warm_queries
    assert set(melu.user_role[raw.rating_user[heavy.train_ratings]]) == {0}
    assert existing[heavy.train_ratings].all() and len(train) > 4 * len(melu_train)
    # The floors' item biases read them: a hand count of training ratings per item.
    items = raw.rating_item[heavy.train_ratings]
    assert torch.equal(heavy.item_count, torch.from_numpy(np.bincount(items, minlength=len(raw.item_year)).astype(np.float32)))

    # An episode of a heavy user is a task of MeLU's size: 10 query ratings, at most 90 support ones,
    # drawn from its own training ratings.
    g = torch.Generator().manual_seed(0)
    batch = heavy.sample_train(len(heavy.pool_users), g)
    n_support, n_query = batch.support_mask.sum(1), batch.query_mask.sum(1)
    cap = melu.cfg.max_ratings - melu.cfg.query_size
    assert n_support.max() == cap and n_query.max() == melu.cfg.query_size
    assert (n_support == cap).sum() == len(added)  # a 13-100 user's episode keeps its own query out of 90
    drawn = heavy.pool[heavy.pool_mask.bool()]  # the rows episodes are drawn from: the training ratings
    assert sorted(drawn.tolist()) == sorted(train)


@needs_ml100k()
def test_a_larger_validation_share_keeps_the_test_users_and_their_tasks():
    """The split cuts at rounded cumulative shares: 0.6/0.2/0.2 takes its extra validation users from
    the meta-train ones and leaves every test task as 0.7/0.1/0.2 has it."""
    small, large = source_of("data.split=[0.7,0.1,0.2]"), source_of("data.split=[0.6,0.2,0.2]")
    n = len(small.user_role)
    assert (small.user_role == 2).sum() == (large.user_role == 2).sum() == n - round(0.8 * n)
    assert np.array_equal(small.user_role == 2, large.user_role == 2)
    assert set(np.flatnonzero(large.user_role == 1)) > set(np.flatnonzero(small.user_role == 1))
    for state in ("user_cold", "user_item_cold"):
        a, b = small.tasks[state], large.tasks[state]
        assert np.array_equal(a.users, b.users)
        assert torch.equal(a.support, b.support) and torch.equal(a.query, b.query)
    assert len(large.tasks["val"].users) > 1.6 * len(small.tasks["val"].users)


@needs_ml100k()
def test_val_items_holds_out_a_seeded_share_of_new_items_for_item_colds_own_validation_state():
    melu, held = source_of(), source_of("data.val_items=0.2")
    raw = melu.raw
    assert "val_item_cold" not in melu.tasks and "val_item_cold" not in melu.eval_tasks("val")  # off by default
    for state, t in melu.tasks.items():  # every other state keeps MeLU's tasks exactly
        if state == "item_cold":
            continue
        for part in ("users", "support", "support_mask", "query", "query_mask"):
            assert np.array_equal(np.asarray(getattr(t, part)), np.asarray(getattr(held.tasks[state], part))), (state, part)
    val, test = held.tasks["val_item_cold"], held.tasks["item_cold"]
    assert len(val.users) > 100 and "val_item_cold" in held.eval_tasks("val") and "val_item_cold" not in held.eval_tasks("test")
    new = raw.item_year > melu.cut  # oracle: the cut year, not the source's own mask
    val_rows = rows(val, "support") | rows(val, "query")
    test_rows = rows(test, "support") | rows(test, "query")
    for part in (val_rows, test_rows):  # meta-train users' ratings of new items, as item_cold's were
        part = np.array(sorted(part))
        assert new[raw.rating_item[part]].all() and (held.user_role[raw.rating_user[part]] == 0).all()
    val_items, test_items = set(raw.rating_item[list(val_rows)].tolist()), set(raw.rating_item[list(test_rows)].tolist())
    assert not val_items & test_items  # a held-out item is never in item_cold
    assert len(val_items) <= round(0.2 * new.sum()) and len(val_items) > 0.1 * new.sum()
    assert set(test.users.tolist()) <= set(melu.tasks["item_cold"].users.tolist())
    n_query, n_support = val.query_mask.sum(1), val.support_mask.sum(1)  # up to half a task's ratings, 10 at most
    assert (n_query >= 1).all() and (n_query <= 10).all() and (n_query == torch.clamp((n_query + n_support) // 2, max=10)).all()
    assert (test.query_mask.sum(1) == 10).all() and (test.support_mask.sum(1) >= 1).all()  # item_cold keeps MeLU's query size
    assert rows(held.tasks["warm"], "support") == rows(melu.tasks["warm"], "support")  # training is unchanged
    again, other = source_of("data.val_items=0.2"), source_of("data.val_items=0.2", "data.split_seed=1")
    assert np.array_equal(again.tasks["val_item_cold"].query.numpy(), val.query.numpy())  # seeded
    other_items = set(raw.rating_item[list(rows(other.tasks["val_item_cold"], "query"))].tolist())
    assert other_items != set(raw.rating_item[list(rows(val, "query"))].tolist())
def by_hand_item_bias(raw, rows, mu, shrink=5.0):
    """{item: (sum of r - mu, count)} over the rating rows `rows`, and the shrunk biases {item: b_i}."""
    sums = {}
    for r in rows:
        s, c = sums.get(raw.rating_item[r], (0.0, 0))
        sums[raw.rating_item[r]] = (s + float(raw.rating[r]) - mu, c + 1)
    return sums, {i: s / (c + shrink) for i, (s, c) in sums.items()}


def real_rows(index, mask):
    return [[int(r) for r, m in zip(ri, mi) if m > 0] for ri, mi in zip(index.tolist(), mask.tolist())]


@needs_ml100k()
def test_the_four_simple_floors_by_hand():
    """global_mean, user_mean, bias and bias_transductive, from the ratings with plain Python: the design's
    formulas (item bias shrunk by 5 over training ratings, a user's by 3 over the support set; the
    transductive item bias pools every support set of the state as well)."""
    src = source_of("data.mf_rank=1")  # floors() fits the MF floors too: rank 1 keeps that cheap
    raw = src.raw
    mu = sum(float(raw.rating[r]) for r in src.train_ratings) / len(src.train_ratings)
    sums, b = by_hand_item_bias(raw, src.train_ratings, mu)
    for state in ("user_cold", "item_cold"):
        t, floors = src.tasks[state], src.floors(state)
        supports, queries = real_rows(t.support, t.support_mask), real_rows(t.query, t.query_mask)
        rating = lambda r: float(raw.rating[r])  # noqa: E731
        user_b = [sum(rating(r) - mu - b.get(raw.rating_item[r], 0.0) for r in s) / (len(s) + 3) for s in supports]
        pooled = dict(sums)
        for s, ub in zip(supports, user_b):
            for r in s:
                total, count = pooled.get(raw.rating_item[r], (0.0, 0))
                pooled[raw.rating_item[r]] = (total + rating(r) - mu - ub, count + 1)
        b_t = {i: total / (count + 5) for i, (total, count) in pooled.items()}
        user_bt = [sum(rating(r) - mu - b_t[raw.rating_item[r]] for r in s) / (len(s) + 3) for s in supports]
        for k, (s, q) in enumerate(zip(supports, queries)):
            for j, r in enumerate(q):
                item = raw.rating_item[r]
                want = {"global_mean": mu, "user_mean": sum(map(rating, s)) / len(s),
                        "bias": mu + user_b[k] + b.get(item, 0.0), "bias_transductive": mu + user_bt[k] + b_t.get(item, 0.0)}
                for name, value in want.items():
                    assert float(floors[name][k, j]) == pytest.approx(value, abs=2e-4), (state, name, k, j)
    assert src.mu == pytest.approx(mu, abs=1e-6)  # float32 sums


BIAS_EDGES = [round(-1.5 + 0.15 * k, 2) for k in range(21)]  # the item context's buckets, as the design fixes them
COUNT_EDGES = [1, 2, 4, 8, 16, 32, 64, 128]


def context_by_hand(raw, members, rows, mu):
    """Per row: (bias code, count code, the shrunk mean) of its item over the ratings `members` less the
    row's own: each rating's residual less its rater's bias (shrunk by 3 over `members`), summed per
    item, shrunk by 5; code 0 = no other rating, else 1 + the edges below the mean; count code = edges <= count."""
    resid = {r: float(raw.rating[r]) - mu for r in members}
    per_user = {}
    for r in members:
        s, c = per_user.get(raw.rating_user[r], (0.0, 0))
        per_user[raw.rating_user[r]] = (s + resid[r], c + 1)
    user_b = {u: s / (c + 3) for u, (s, c) in per_user.items()}
    debiased = lambda r: float(raw.rating[r]) - mu - user_b.get(raw.rating_user[r], 0.0)  # noqa: E731
    per_item = {}
    for r in members:
        s, c = per_item.get(raw.rating_item[r], (0.0, 0))
        per_item[raw.rating_item[r]] = (s + debiased(r), c + 1)
    member, out = set(members), {}
    for r in rows:
        s, c = per_item.get(raw.rating_item[r], (0.0, 0))
        if r in member:
            s, c = s - debiased(r), c - 1
        mean = s / (c + 5)
        out[r] = (0 if c == 0 else 1 + sum(e < mean for e in BIAS_EDGES), sum(e <= c for e in COUNT_EDGES), mean)
    return out


@needs_ml100k()
def test_the_item_context_buckets_by_hand():
    src = source_of("data.item_stats=true", "data.item_stats_transductive=true")  # states count their supports too
    raw = src.raw
    mu = sum(float(raw.rating[r]) for r in src.train_ratings) / len(src.train_ratings)
    pool = [int(r) for r in src.train_ratings]
    checks = {"train": (pool, pool[::7])}  # the full-pool context (evaluation of warm tasks reads it too)
    for state in ("user_cold", "item_cold"):
        t = src.tasks[state]
        support = [r for s in real_rows(t.support, t.support_mask) for r in s]
        query = [r for q in real_rows(t.query, t.query_mask) for r in q]
        checks[state] = (pool + [r for r in support if r not in set(pool)], support + query)  # never a query rating
    for name, (members, rows) in checks.items():
        want, got = context_by_hand(raw, members, rows, mu), src.item_context[name]
        # float32 sums may fall on the other side of an edge the exact mean is within 1e-4 of (an item with
        # no other rating has mean 0, an edge, and code 0 whatever the rounding)
        off_edge = [r for r in rows if want[r][0] == 0 or min(abs(want[r][2] - e) for e in BIAS_EDGES) > 1e-4]
        assert len(off_edge) > 0.99 * len(rows)
        assert [tuple(got[r].tolist()) for r in off_edge] == [want[r][:2] for r in off_edge], name
        assert [int(got[r][1]) for r in rows] == [want[r][1] for r in rows], name
        assert len({want[r][0] for r in rows}) > 5 and len({want[r][1] for r in rows}) > 3  # the buckets are used
