"""algo.inner_params=all with embedding tables wider than a task's support (DBook: 10,544 authors), no
multi-hot block, and a fixed factor table (data.item_factors): the fast path keeps each task's own rows
of a table (metarec/engine/task_rows.py) instead of a copy of the whole table per task, and still equals
the per-task oracle (float64, 1e-10): the meta-gradient in first and second order, Reptile's step with
SGD (the rows) and Adam (the whole-table gradient as an index_add), and the evaluation's trace against
the core path."""
import pytest
import torch
from fixtures import WIDE, fast_options, rating_batch
from metarec.bench.reference import per_task_meta_loss, per_task_reptile_step
from omegaconf import OmegaConf

from metarec.algos.maml import MAML
from metarec.algos.reptile import Reptile, ReptileConfig
from metarec.engine import Engine, task_rows as rows
from metarec.models.melu import MeLU

BATCH = dict(n_tasks=7, support=(1, 12), query=(2, 6), spec=WIDE)


def model(factors: bool = False):
    torch.manual_seed(0)
    spec = {**WIDE, "factors": torch.randn(25, 3)} if factors else WIDE
    return MeLU(spec, embedding_dim=5, hidden=[8, 8]).double()


def batch_of(factors: bool = False):
    """BATCH; with factors, each rating's factor row in a last column of x (as data.item_factors writes it)."""
    b = rating_batch(**BATCH)
    if not factors:
        return b
    g = torch.Generator().manual_seed(1)
    join = lambda x: torch.cat([x, torch.randint(0, 25, (*x.shape[:2], 1), generator=g)], -1)  # noqa: E731
    return type(b)(join(b.support_x), b.support_y, b.support_mask, join(b.query_x), b.query_y, b.query_mask)


@pytest.fixture
def kept_rows(monkeypatch):
    """The widths of the per-task row sets the engine kept (TaskRows.of's results)."""
    seen, of = [], rows.TaskRows.of.__func__
    monkeypatch.setattr(rows.TaskRows, "of", classmethod(lambda cls, index: seen.append(of(cls, index)) or seen[-1]))
    return seen


def test_task_rows_reindex_each_task_into_its_own_rows():
    index = torch.tensor([[7, 3, 7, 0], [5, 5, 5, 5]])
    r = rows.TaskRows.of(index)
    assert r.rows.tolist() == [[0, 3, 7], [5, 0, 0]] and r.valid.tolist() == [[True] * 3, [True, False, False]]
    assert torch.equal(r.rows.gather(1, r.local), index)  # every entry finds its own row
    table = torch.arange(20.0).view(10, 2)
    moved = r.gather(table) + 100
    whole = r.expand(table, moved)
    assert whole.shape == (2, 10, 2)
    assert whole[0, [0, 3, 7]].tolist() == (table[[0, 3, 7]] + 100).tolist() and whole[1, 5].tolist() == [110.0, 111.0]
    untouched = [i for i in range(10) if i not in (0, 3, 7)]
    assert torch.equal(whole[0, untouched], table[untouched]) and torch.equal(whole[1, :5], table[:5])  # padding: theta's


@pytest.mark.parametrize("factors", [False, True])
@pytest.mark.parametrize("option", [{}, {"gram": False}, {"group_cost": 0}])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_with_wide_tables_equals_the_oracle(option, first_order, factors, kept_rows):
    m = model(factors)
    cfg = OmegaConf.create(dict(inner_lr=0.3, inner_steps=3, first_order=first_order, inner_params="all", meta_lr=1e-3,
                                learn_inner_lr=False, weight_decay=0.0))
    algo = MAML(cfg, m, "rating")
    fast_options(algo.engine.fast, **option)
    batch = batch_of(factors)
    params = list(m.parameters())
    a = torch.autograd.grad(algo.meta_loss(batch), params, allow_unused=True)
    b = torch.autograd.grad(per_task_meta_loss(m, algo.engine.inner_names, batch, "rating", 0.3, 3, first_order),
                            params, allow_unused=True)
    for (name, _), x, y in zip(m.named_parameters(), a, b):
        assert torch.allclose(x, y, atol=1e-10, rtol=0), name
    assert kept_rows and max(r.width for r in kept_rows) <= 12 + 6 < 60  # support + query rows, not whole tables


@pytest.mark.parametrize("inner", [dict(inner_optimizer="sgd"), dict(inner_optimizer="adam", inner_lr=0.01, inner_betas=[0.9, 0.99])])
def test_reptile_step_with_wide_tables_equals_the_per_task_reference(inner):
    """SGD keeps the tasks' own rows; Adam (whole tables per task) takes each field's gradient as an index_add."""
    m, reference = model(), model()
    cfg = OmegaConf.structured(ReptileConfig(**{**dict(inner_lr=0.3, inner_steps=3, inner_params="all", meta_lr=1e-3,
                                                       weight_decay=0.0, outer="adam"), **inner}))
    algo = Reptile(cfg, m, "rating")
    assert algo.engine.fast is not None  # no multi-hot block: still the fast path
    algo.optimizer.step = lambda: None
    batch = rating_batch(**BATCH)
    algo.step(batch)
    per_task_reptile_step(reference, algo.engine.inner_names, batch, "rating", cfg.inner_lr, cfg.inner_steps, algo.inner_adam())
    for (name, p), q in zip(m.named_parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-10, rtol=0), name
    assert m.encoder.embeddings["author"].weight.grad.abs().max() > 1e-4


@pytest.mark.parametrize("factors", [False, True])
def test_evaluation_trace_with_wide_tables_is_the_core_paths(factors, kept_rows):
    cfg = OmegaConf.create(dict(inner_lr=0.3, inner_steps=2, first_order=False, inner_params="all", meta_lr=1e-3,
                                learn_inner_lr=False, weight_decay=0.0))
    m = model(factors)
    fast, core = MAML(cfg, m, "rating"), MAML(cfg, m, "rating")
    core.engine = Engine(m, core.engine.inner_names, "rating", fast_paths=False)
    assert fast.engine.fast is not None
    batch = batch_of(factors)
    want, got = core.adapt_trace(batch, 4), fast.adapt_trace(batch, 4)
    assert kept_rows and len(got) == 5
    for a, b in zip(want, got):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)
    assert not torch.allclose(got[0], got[4], atol=1e-3)  # the steps moved the predictions
