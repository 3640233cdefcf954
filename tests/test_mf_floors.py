"""The matrix-factorisation floors (mf_foldin, mf_transductive): the vectorised fold-in against a
per-task least-squares solve, the transductive fit against a plain loop, what each may read, and
the floors on real ml-100k tasks."""
import pytest
import torch
from conftest import ML100K, needs_ml100k
from omegaconf import OmegaConf

from metarec.data import mf_floors
from metarec.data.factors import USER_BIAS_PRECISION


def planted(seed=0, users=60, items=40, rank=2):
    """A low-rank rating matrix, half of it observed: (users, items, ratings) [n] each."""
    g = torch.Generator().manual_seed(seed)
    truth = (3.5 + 0.3 * torch.randn(users, 1, generator=g) + 0.3 * torch.randn(1, items, generator=g)
             + torch.randn(users, rank, generator=g) @ torch.randn(rank, items, generator=g)).double()
    seen = torch.rand(users, items, generator=g) < 0.5
    u, i = seen.nonzero(as_tuple=True)
    return u, i, truth[u, i], truth


def support_sets(g, n_tasks, n_items, width=6):
    """Padded support sets (items, y, mask) [tasks, width] with 2..width distinct items each."""
    items = torch.stack([torch.randperm(n_items, generator=g)[:width] for _ in range(n_tasks)])
    lengths = torch.randint(2, width + 1, (n_tasks,), generator=g)
    mask = (torch.arange(width)[None] < lengths[:, None]).double()
    y = torch.randint(1, 6, (n_tasks, width), generator=g).double() * mask
    return items, y, mask


def test_the_fold_in_is_each_tasks_ridge_solution():
    u, i, r, _ = planted()
    model = mf_floors.fit(u, i, r, 60, 40, 3.5, rank=3, reg=1.0, iters=10)
    g = torch.Generator().manual_seed(1)
    items, y, mask = support_sets(g, 7, 40)
    p, b = mf_floors.fold_in(model, items, y, mask, reg=2.0)
    for t in range(7):  # the oracle: the normal equations of task t's own ratings, solved alone
        seen = mask[t].bool()
        x = torch.cat([model.item_factors[items[t][seen]], torch.ones(int(seen.sum()), 1, dtype=torch.float64)], 1)
        target = y[t][seen] - 3.5 - model.item_bias[items[t][seen]]
        prior = torch.diag(torch.tensor([2.0] * 3 + [USER_BIAS_PRECISION], dtype=torch.float64))
        want = torch.linalg.solve(x.T @ x + prior, x.T @ target)
        assert torch.allclose(torch.cat([p[t], b[t:t + 1]]), want, atol=1e-12)
    query = torch.randint(0, 40, (7, 4), generator=g)
    pred = mf_floors.predict(model, p, b, query)
    t, j = 3, 2
    want = 3.5 + b[t] + model.item_bias[query[t, j]] + p[t] @ model.item_factors[query[t, j]]
    assert torch.allclose(pred[t, j], want, atol=1e-12)


def test_the_fit_rows_are_the_fold_in_of_their_own_ratings():
    u, i, r, _ = planted(2)
    model = mf_floors.fit(u, i, r, 60, 40, 3.5, rank=2, reg=0.5, iters=8)
    for row in (0, 17, 59):  # the oracle: the row's own ratings, its ridge problem solved alone
        seen = u == row
        x = torch.cat([model.item_factors[i[seen]], torch.ones(int(seen.sum()), 1, dtype=torch.float64)], 1)
        prior = torch.diag(torch.tensor([0.5, 0.5, USER_BIAS_PRECISION], dtype=torch.float64))
        want = torch.linalg.solve(x.T @ x + prior, x.T @ (r[seen] - 3.5 - model.item_bias[i[seen]]))
        assert torch.allclose(torch.cat([model.row_factors[row], model.row_bias[row:row + 1]]), want, atol=1e-12)


def test_the_transductive_floor_equals_a_plain_loop_and_reads_no_query():
    u, i, r, truth = planted(3)
    g = torch.Generator().manual_seed(4)
    n_items, new = 45, torch.arange(40, 45)  # five items that no training rating touches
    items, y, mask = support_sets(g, 9, n_items)
    query = torch.randint(0, n_items, (9, 3), generator=g)
    settings = mf_floors.MFSettings(rank=2, reg=1.0, foldin_reg=1.0, transductive_reg=3.0, iters=6)
    pred = mf_floors.transductive_floor((u, i, r), 60, n_items, 3.5, (items, y, mask), query, settings)
    # the oracle: one rating list (training users, then each task as a row of its own), fitted, read row by row
    rows, cols, vals = [u], [i], [r]
    for t in range(9):
        seen = mask[t].bool()
        rows.append(torch.full((int(seen.sum()),), 60 + t))
        cols.append(items[t][seen])
        vals.append(y[t][seen])
    model = mf_floors.fit(torch.cat(rows), torch.cat(cols), torch.cat(vals), 69, n_items, 3.5, 2, 3.0, 6)
    for t in range(9):
        for j in range(3):
            q = query[t, j]
            want = 3.5 + model.row_bias[60 + t] + model.item_bias[q] + model.row_factors[60 + t] @ model.item_factors[q]
            assert torch.allclose(pred[t, j], want, atol=1e-10)
    # a new item rated in some support set gets a bias from it; the fold-in floor knows nothing of it
    rated_new = [int(n) for n in new if bool(((items == n) & mask.bool()).any())]
    assert rated_new and all(abs(float(model.item_bias[n])) > 0 for n in rated_new)
    foldin = mf_floors.fit(u, i, r, 60, n_items, 3.5, 2, 1.0, 6)
    assert all(float(foldin.item_bias[n]) == 0.0 for n in rated_new)
    # query ratings are never an input: the transductive floor has no argument that could carry them
    padded = y.clone()
    padded[mask == 0] = 5.0  # padding values are never read either
    again = mf_floors.transductive_floor((u, i, r), 60, n_items, 3.5, (items, padded, mask), query, settings)
    assert torch.equal(pred, again)


@needs_ml100k()
def test_the_floors_on_real_ml100k_tasks():
    from metarec.config.schema import MovieLensConfig
    from metarec.data.movielens import MovieLensTasks
    cfg = OmegaConf.structured(MovieLensConfig(root=str(ML100K), heavy_users=True, split=[0.6, 0.2, 0.2]))
    source = MovieLensTasks(cfg, "cpu", 0, progress=False)

    def mae(state, name):
        t = source.tasks[state]
        pred = source.floors(state)[name]
        return float(((pred - source.y[t.query]).abs() * t.query_mask).sum() / t.query_mask.sum())

    # on existing items the fold-in beats the bias floor; on new items it is the bias floor (q = 0, b_i = 0)
    assert mae("warm", "mf_foldin") < mae("warm", "bias") - 0.005
    assert mae("item_cold", "mf_foldin") == pytest.approx(mae("item_cold", "bias"), abs=1e-5)
    assert mae("item_cold", "mf_transductive") < mae("item_cold", "bias")
    bad = OmegaConf.structured(MovieLensConfig(root=str(ML100K), mf_rank=0))
    from metarec.errors import UserError
    with pytest.raises(UserError, match="data.mf_rank=0"):
        MovieLensTasks(bad, "cpu", 0, progress=False).floors("warm")


# MAE of (mf_foldin, mf_transductive) per state on ml-100k, split seed 0, default settings, as the dense
# [rows, items] ALS of commit a8728c3 computed them (one thread): the sparse solves sum in another order.
DENSE_MAE = {"warm": (0.75241, 0.745646), "user_cold": (0.723557, 0.722804), "item_cold": (0.8945, 0.814505),
             "user_item_cold": (0.882456, 0.812436), "val": (0.750889, 0.758782), "val_new": (0.899278, 0.850686)}


@pytest.mark.slow
@needs_ml100k()
def test_the_sparse_floors_equal_the_dense_ones_on_ml100k():
    from metarec.config.compose import compose
    from metarec.data import build_source
    source = build_source(compose(["data=movielens", f"data.root={ML100K}"]).data, torch.device("cpu"), 0, progress=False)
    for state, want in DENSE_MAE.items():
        t, floors = source.tasks[state], source.floors(state)
        got = [float(((floors[n] - source.y[t.query]).abs() * t.query_mask).sum() / t.query_mask.sum())
               for n in ("mf_foldin", "mf_transductive")]
        assert got == pytest.approx(want, abs=1e-4), state


MILLION = """
import resource, types
import numpy as np, torch
from metarec.data import mf_floors
torch.set_num_threads(1)
users, items, n, tasks = 1_000_000, 1_000_000, 2_000_000, 20_000
g = np.random.default_rng(0)
raw = types.SimpleNamespace(num_users=users, num_items=items, rating_user=g.integers(0, users, n),
                            rating_item=g.integers(0, items, n), rating=g.integers(1, 6, n).astype(np.float32))
idx = g.permutation(n)[:tasks * 8].reshape(tasks, 8)  # a task: 5 support and 3 query ratings
train = np.setdiff1d(np.arange(n), idx[:, 5:].ravel())
floors = mf_floors.MFFloors(mf_floors.MFSettings(iters=1), raw, train, 3.0)
out = floors(torch.from_numpy(idx[:, :5]), torch.ones(tasks, 5), torch.from_numpy(idx[:, 5:]))
assert all(v.shape == (tasks, 3) and bool(v.isfinite().all()) for v in out.values())
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


@pytest.mark.slow
def test_the_floors_of_a_million_users_and_items_fit_in_1_5_gb():
    # dense [users, items] float64 matrices would need 8 TB each; the sparse fit needs the ratings and
    # (users + items) x rank^2 numbers. One ALS sweep: the memory does not grow with the sweeps.
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", MILLION], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    peak_mb = float(done.stdout.strip().splitlines()[-1])
    assert peak_mb < 1536, peak_mb
