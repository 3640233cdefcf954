"""Collaborative item factors (data.item_factors): the ALS solves against per-row least squares, a
planted low-rank matrix recovered, cross-fitting that never reads a fold's own ratings, the
factor column of real MovieLens tasks, and ridge's fold-in with the meta-gradient of a plain loop."""
import numpy as np
import pytest
import torch
from conftest import ML100K, needs_ml100k, read_json, run_cli, train_ml100k
from fixtures import SPEC, rating_batch
from test_ridge import per_task_meta_gradient, ridge_cfg

from metarec.algos import ALGOS
from metarec.data import factors
from metarec.data.factors import Ratings, als, cross_fitted, ridge_rows, rotate_onto
from metarec.errors import UserError
from metarec.models.melu import MeLU


def test_each_rows_solve_is_its_least_squares_optimum(monkeypatch):
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(7, 9, generator=g) < 0.6).double()
    mask[3] = 0  # a row without ratings: its prior alone, so zeros
    target, other = torch.randn(7, 9, generator=g, dtype=torch.float64), torch.randn(9, 3, generator=g, dtype=torch.float64)
    u, i = mask.nonzero(as_tuple=True)
    shuffle = torch.randperm(len(u), generator=g)  # entries in no particular order
    u, i = u[shuffle], i[shuffle]
    monkeypatch.setattr(factors, "ROWS_PER_CHUNK", 3)  # rows solved in chunks of 3 (a chunk boundary inside)
    p, b = ridge_rows(Ratings(u, i, 7, 9), target[u, i], other, reg=2.0, reg_bias=0.5)
    for row in range(7):  # the oracle: row u's own ratings, its normal equations solved alone
        seen = mask[row].bool()
        x = torch.cat([other[seen], torch.ones(int(seen.sum()), 1, dtype=torch.float64)], 1)
        prior = torch.diag(torch.tensor([2.0, 2.0, 2.0, 0.5], dtype=torch.float64))
        want = torch.linalg.solve(x.T @ x + prior, x.T @ target[row][seen])
        assert torch.allclose(torch.cat([p[row], b[row:row + 1]]), want, atol=1e-12)
    assert not p[3].any() and b[3] == 0


def test_a_planted_low_rank_matrix_is_recovered_on_entries_it_never_saw():
    g = torch.Generator().manual_seed(1)
    users, items, rank = 120, 80, 2
    truth = (3.5 + 0.3 * torch.randn(users, 1, generator=g) + 0.3 * torch.randn(1, items, generator=g)
             + torch.randn(users, rank, generator=g) @ torch.randn(rank, items, generator=g)).double()
    seen = (torch.rand(users, items, generator=g) < 0.5).double()
    noisy = truth + 0.1 * torch.randn(users, items, generator=g, dtype=torch.float64)
    u, i = seen.nonzero(as_tuple=True)
    r = Ratings(u, i, users, items)
    q, b_item = als(r, noisy[u, i], 3.5, rank, reg=0.1, iters=30, start=0.1 * torch.randn(items, rank, generator=g, dtype=torch.float64))
    p, b_user = ridge_rows(r, noisy[u, i] - 3.5 - b_item[i], q, 0.1, 0.1)  # each user's fold-in on what it rated
    pred = 3.5 + b_user.unsqueeze(1) + b_item + p @ q.T
    held_out = (1 - seen).bool()
    rmse = ((pred - truth)[held_out] ** 2).mean().sqrt()
    spread = truth[held_out].std()
    assert rmse < 0.2 < spread  # the noise is 0.1; the ratings spread over ~1.5


def test_rotate_onto_undoes_a_rotation():
    g = torch.Generator().manual_seed(2)
    target = torch.randn(30, 4, generator=g, dtype=torch.float64)
    r, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    assert torch.allclose(rotate_onto(target @ r, target), target, atol=1e-10)


def test_a_fold_table_never_reads_its_own_users_ratings():
    g = torch.Generator().manual_seed(3)
    n_users, n_items, folds = 40, 25, 4
    users = torch.arange(n_users).repeat_interleave(10)
    items = torch.cat([torch.randperm(n_items, generator=g)[:10] for _ in range(n_users)])  # 10 distinct items each
    ratings = torch.randint(1, 6, (len(users),), generator=g).double()
    fold = torch.arange(n_users) % folds
    tables = cross_fitted(users, items, ratings, n_users, n_items, 3.0, fold, folds, rank=3, reg=1.0)
    assert tables.shape == (folds + 1, n_items, 3)
    changed = ratings.clone()
    changed[fold[users] == 1] = 6 - changed[fold[users] == 1]  # fold 1's users rate the other way round
    again = cross_fitted(users, items, changed, n_users, n_items, 3.0, fold, folds, rank=3, reg=1.0)
    # Table 1 reads fold 1 only through the rotation onto the full fit: its Gram matrix, which a
    # rotation leaves alone, does not move; every table that reads fold 1 does.
    gram = lambda t: t @ t.T  # noqa: E731
    assert torch.allclose(gram(again[1]), gram(tables[1]), atol=1e-9)
    assert not torch.allclose(again[1], tables[1])  # (the rotation itself does)
    for f in (0, 2, 3, folds):
        assert not torch.allclose(gram(again[f]), gram(tables[f]), atol=1e-3), f


SPEC_F = {**SPEC, "factors": torch.cat([torch.zeros(1, 3), torch.randn(6, 3, generator=torch.Generator().manual_seed(4))])}


def factor_batch(**kw):
    """rating_batch with a last column naming each rating's factor row (0 = none)."""
    batch = rating_batch(**kw)
    g = torch.Generator().manual_seed(5)
    col = lambda x: torch.randint(0, 7, x.shape[:-1] + (1,), generator=g)  # noqa: E731
    return type(batch)(torch.cat([batch.support_x, col(batch.support_x)], -1), batch.support_y, batch.support_mask,
                       torch.cat([batch.query_x, col(batch.query_x)], -1), batch.query_y, batch.query_mask)


def make_factor_ridge(**kw):
    torch.manual_seed(0)
    model = MeLU(SPEC_F, embedding_dim=6, hidden=[8, 8]).double()
    return model, ALGOS["ridge"](ridge_cfg(prior_precision_factors=4.0, **kw), model, "rating")


def test_the_encoder_joins_each_ratings_factor_row():
    model, _ = make_factor_ridge()
    batch = factor_batch(n_tasks=2)
    h = model.encoder(batch.query_x)
    assert h.shape[-1] == model.encoder.out_dim == 6 * 6 + 3
    assert torch.equal(h[..., -3:], SPEC_F["factors"].double()[batch.query_x[..., -1]])
    plain = MeLU(SPEC, embedding_dim=6, hidden=[8, 8]).double()
    plain.encoder.load_state_dict({k: v for k, v in model.encoder.state_dict().items() if k != "factors"})
    assert torch.equal(h[..., :-3], plain.encoder(batch.query_x[..., :-1]))  # the rest reads as before


def test_ridge_folds_in_the_factors_and_its_meta_gradient_equals_a_per_task_loop():
    model, algo = make_factor_ridge()
    batch = factor_batch(n_tasks=4, support=(2, 9), query=(1, 5))
    phi = algo.features(batch.query_x)
    assert phi.shape[-1] == 8 + 3 + 1 and torch.equal(phi[..., 8:11], SPEC_F["factors"].double()[batch.query_x[..., -1]])
    assert algo.prior()[8:11].tolist() == [0.0, 0.0, 0.0]  # a typical user's taste starts at none
    assert algo.log_prior.exp()[8:11].tolist() == pytest.approx([4.0] * 3)
    params = algo.meta_parameters()
    assert any(p is algo.factor_prior for p in params)
    got = torch.autograd.grad(algo.meta_loss(batch), params)
    want = per_task_meta_gradient(algo, batch, params)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)
    state = algo.state_dict()
    _, fresh = make_factor_ridge()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.factor_prior, algo.factor_prior)


@needs_ml100k()
def test_movielens_tasks_read_cross_fitted_factors():
    from metarec.config.compose import compose
    from metarec.run.train import build_source
    cfg = compose(["data=movielens", f"data.root={ML100K}", "data.item_factors=4"]).data
    source = build_source(cfg, torch.device("cpu"), 0, progress=False)
    n_items, folds = len(source.raw.item_year), cfg.factor_folds
    table = source.model_spec()["factors"]
    assert table.shape == (1 + (folds + 1) * n_items, 4) and not table[0].any()
    row = source.x[:, -1]
    fold, item = (row - 1) // n_items, (row - 1) % n_items
    assert torch.equal(item, source.rating_item)
    user_fold = {}
    for u, f in zip(source.raw.rating_user.tolist(), fold.tolist()):
        assert user_fold.setdefault(u, f) == f  # one table per user
    pool = set(source.pool_users.tolist())
    assert all((user_fold[u] < folds) == (u in pool) for u in user_fold)  # meta-train users read a fold's table
    assert sorted(np.bincount([user_fold[u] for u in pool])) [0] >= len(pool) // folds
    for state in ("val", "user_cold", "user_item_cold"):  # everyone else reads the full fit
        t = source.tasks[state]
        assert set(fold[t.query[t.query_mask.bool()]].tolist()) == {folds}
    new = torch.from_numpy(source.raw.item_year > source.cut)[item]
    assert not table[row[new]].any()  # a new item has no training rating, so no factors
    batch = source.eval_tasks("val")["val"]
    assert torch.equal(batch.query_x[..., -1], source.x[source.tasks["val"].query][..., -1])
    with pytest.raises(UserError, match="data.factor_folds=1"):
        build_source(compose(["data=movielens", f"data.root={ML100K}", "data.item_factors=4", "data.factor_folds=1"]).data,
                     torch.device("cpu"), 0, progress=False)


@needs_ml100k()
@pytest.mark.slow  # the default suite's heaviest call: an ml-100k run with cross-fitted factors, then an eval
def test_ridge_with_factors_trains_and_its_checkpoint_evaluates_the_same(tmp_path, cache_env):
    run = tmp_path / "run"
    train_ml100k(run, "experiment=melu_ml100k_ridge", env=cache_env)
    ck = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert ck["config"]["data"]["item_factors"] > 0 and "encoder.factors" in ck["model"]
    result = read_json(run / "eval.json")["states"]
    assert result["user_cold"]["steps"]["1"]["mae"] < result["user_cold"]["floors"]["global_mean"]["mae"]
    r = run_cli("eval", f"checkpoint={run / 'checkpoints' / 'best.pt'}", "device=cpu", "device.threads=1",
                f"hydra.run.dir={tmp_path / 'eval'}", env=cache_env)
    assert r.returncode == 0, r.stderr[-3000:]
    again = read_json(tmp_path / "eval" / "eval.json")["states"]
    for state in result:
        assert again[state]["steps"]["1"]["mae"] == pytest.approx(result[state]["steps"]["1"]["mae"], rel=1e-6)
