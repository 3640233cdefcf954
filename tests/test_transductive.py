"""The exact transductive input (data.transductive, metarec/data/transductive.py): the item context
against a per-rating reference loop, cross-fitting that never reads the target user's ratings, and
the hook on real MovieLens tasks (what each state shows, which row each batch reads)."""
import numpy as np
import pytest
import torch
from conftest import ML100K, needs_ml100k
from omegaconf import OmegaConf

from metarec.config.schema import MovieLensConfig
from metarec.data.factors import ITEM_BIAS_PRECISION, USER_BIAS_PRECISION
from metarec.data.transductive import TransSettings, Visible, context, left_out_bias, pooled


def _visible(seed: int, n_users=12, n_items=9, offset=0, share=0.5) -> Visible:
    g = np.random.default_rng(seed)
    pairs = [(u, i) for u in range(n_users) for i in range(n_items) if g.random() < share]
    users, items = (torch.tensor(c) for c in zip(*pairs))
    ratings = torch.from_numpy(g.integers(1, 6, len(pairs)).astype(np.float64))
    return Visible(users, items, ratings, offset + torch.arange(len(pairs)))


def _reference(seen: list, row_of: list, u: int, i: int, mu: float) -> tuple[float, float]:
    """item_bias and count of (u, i), one rating at a time: every rating of (row, item, y) in `seen`
    except user u's rating of i, each less mu and its row's shrunk mean residual."""
    total, count = 0.0, 0
    for (user, item, y), row in zip(seen, row_of):
        if item != i or (user == u):
            continue
        mine = [yy - mu for (_, _, yy), r in zip(seen, row_of) if r == row]
        total += y - mu - sum(mine) / (len(mine) + USER_BIAS_PRECISION)
        count += 1
    return total / (count + ITEM_BIAS_PRECISION), count


@pytest.mark.parametrize("with_state", [False, True])
def test_item_context_is_the_per_rating_loop(with_state):
    n_users, n_items, mu = 12, 9, 3.3
    train = _visible(0)
    state = _visible(1, offset=1000) if with_state else None
    users, items = torch.tensor([0, 3, 5, 11, 2]), torch.tensor([1, 4, 8, 0, 2])
    got = context(train, state, users, items, mu, n_users, n_items, TransSettings(rank=0))
    _, counts = left_out_bias(*pooled(train, state, n_users), users, items, mu, n_items)
    seen = [(int(u), int(i), float(y)) for u, i, y in zip(train.users, train.items, train.ratings)]
    row_of = [int(u) for u in train.users]
    if state is not None:  # a state's ratings are rows of their own (n_users + user)
        seen += [(int(u), int(i), float(y)) for u, i, y in zip(state.users, state.items, state.ratings)]
        row_of += [n_users + int(u) for u in state.users]
    for k, (u, i) in enumerate(zip(users.tolist(), items.tolist())):
        bias, count = _reference(seen, row_of, u, i, mu)
        assert got[k, 0].item() == pytest.approx(bias, abs=1e-12)
        assert counts[k].item() == count


def test_a_users_factors_never_read_his_own_ratings():
    n_users, n_items, mu = 12, 9, 3.3
    train, state = _visible(0), _visible(1, offset=1000)
    settings = TransSettings(rank=2, reg=1.0, folds=3, iters=5)
    users, items = torch.full((n_items,), 4), torch.arange(n_items)
    before = context(train, state, users, items, mu, n_users, n_items, settings)
    for v in (train, state):  # user 4 rates everything differently
        v.ratings[v.users == 4] = 6.0 - v.ratings[v.users == 4]
    after = context(train, state, users, items, mu, n_users, n_items, settings)
    assert torch.allclose(before[:, :1], after[:, :1], atol=1e-12)
    # the factors up to the rotation onto the full fit (the one thing his ratings touch, as in factors.py)
    q0, q1 = before[:, 1:], after[:, 1:]
    assert torch.allclose(q0 @ q0.T, q1 @ q1.T, atol=1e-9)
    other = context(train, state, torch.full((n_items,), 5), items, mu, n_users, n_items, settings)
    assert not torch.allclose(before[:, 1:], other[:, 1:])  # another fold's view does move (the test can fail)


@pytest.mark.slow  # builds ml-100k with every floor
@needs_ml100k()
def test_movielens_states_show_their_support_ratings_and_batches_read_their_rows():
    from metarec.data.movielens import MovieLensTasks
    cfg = OmegaConf.structured(MovieLensConfig(root=str(ML100K), transductive=True, trans_rank=2, trans_folds=2))
    src = MovieLensTasks(cfg, "cpu", seed=0, progress=False)
    train = src.visible("train")
    assert torch.equal(train.rows, torch.from_numpy(src.train_ratings))
    t = src.tasks["item_cold"]
    shown = src.visible("item_cold")
    assert set(shown.rows.tolist()) == set(t.support[t.support_mask.bool()].tolist())
    assert not set(shown.rows.tolist()) & set(t.query[t.query_mask.bool()].tolist())  # never a query
    assert torch.equal(shown.ratings.float(), src.y[shown.rows])
    assert src.factor_table.shape[1] == 1 + 2
    batch = src.eval_tasks("test")["item_cold"]
    rows = batch.query_x[..., -1][batch.query_mask.bool()]
    assert (rows > 0).all() and torch.equal(rows, src.trans_rows["eval"][t.query[t.query_mask.bool()]])
    # a new item's bias is what the other users' support sets give it (no training rating), its own user left out
    r = int(t.query[0, 0])
    item, user = src.raw.rating_item[r], src.raw.rating_user[r]
    others = (shown.items == item) & (shown.users != user)
    row_bias = {int(u): (float((shown.ratings[shown.users == u] - src.mu).sum()), int((shown.users == u).sum()))
                for u in shown.users[others].unique()}
    want = sum(float(y) - src.mu - row_bias[int(u)][0] / (row_bias[int(u)][1] + USER_BIAS_PRECISION)
               for u, y in zip(shown.users[others], shown.ratings[others])) / (int(others.sum()) + ITEM_BIAS_PRECISION)
    assert src.factor_table[src.trans_rows["eval"][r], 0].item() == pytest.approx(want, abs=1e-5)
    episode = src.sample_train(8, torch.Generator().manual_seed(0))
    seen = episode.support_x[..., -1][episode.support_mask.bool()]
    assert (seen > 0).all() and (seen < 1 + len(src.train_ratings)).all()  # the training block


@needs_ml100k()
def test_training_blocks_of_thinner_shares_and_one_block_drawn_per_task():
    from metarec.data.movielens import MovieLensTasks
    cfg = OmegaConf.structured(MovieLensConfig(root=str(ML100K), transductive=True, trans_rank=0, trans_shares=[1.0, 0.2]))
    src = MovieLensTasks(cfg, "cpu", seed=0, progress=False)
    plain = MovieLensTasks(OmegaConf.structured(MovieLensConfig(root=str(ML100K), transductive=True, trans_rank=0)),
                           "cpu", seed=0, progress=False)
    n_pool, first = len(src.train_ratings), src.trans_rows["train"][src.train_ratings]
    assert torch.equal(src.factor_table[first], plain.factor_table[plain.trans_rows["train"][src.train_ratings]])
    # block 1: the same ratings' context from the training ratings of a fifth of the meta-train users
    train = src.visible("train")
    chosen = torch.from_numpy(np.random.default_rng([0, 19, 1]).random(src.raw.num_users) < 0.2)
    keep = chosen[train.users]
    thin = Visible(train.users[keep], train.items[keep], train.ratings[keep], train.rows[keep])
    want, count = left_out_bias(thin, thin.users, train.users, train.items, src.mu, src.raw.num_items)
    assert torch.allclose(src.factor_table[first + n_pool, 0].double(), want, atol=1e-5)
    _, full_count = left_out_bias(train, train.users, train.users, train.items, src.mu, src.raw.num_items)
    assert count.median() < 0.3 * full_count.median()  # as thin as a new item's context
    # evaluation reads the states' own rows, as before
    assert torch.equal(src.factor_table[src.trans_rows["eval"][src.trans_rows["eval"] > 0]],
                       plain.factor_table[plain.trans_rows["eval"][plain.trans_rows["eval"] > 0]])
    episode = src.sample_train(64, torch.Generator().manual_seed(3))
    rows = torch.cat([episode.support_x[..., -1] * episode.support_mask, episode.query_x[..., -1] * episode.query_mask], 1).long()
    block = (rows - 1).div(n_pool, rounding_mode="floor")
    real = rows > 0
    per_task = [set(block[t][real[t]].tolist()) for t in range(len(rows))]
    assert all(len(b) == 1 for b in per_task)  # a task reads one block ...
    assert {b.pop() for b in per_task} == {0, 1}  # ... drawn per task: both occur
    assert ((rows - block * n_pool)[real] <= n_pool).all()  # a training rating's own row, shifted by whole blocks
