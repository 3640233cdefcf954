"""MWUF: the vectorised warm loss equals a per-item reference loop (float64, 1e-10), the cold step is
a constant for the meta networks, and evaluation writes the warmed rows of the state's visible items."""
import types

import pytest
import torch
from conftest import assert_same_loss_and_gradients
from fixtures import check_nodes
from omegaconf import OmegaConf
from test_metaemb import GENRES, N_ITEMS, SPEC, YEAR, all_items_batch, show_visible, task_batch
from torch.func import functional_call

from metarec.algos.cold_items import ITEM
from metarec.algos.mwuf import MWUF, MWUFConfig
from metarec.errors import UserError
from metarec.models.melu import MeLU


def make(**kw):
    torch.manual_seed(0)
    model = MeLU(SPEC, embedding_dim=5, hidden=[8, 8]).double()
    cfg = OmegaConf.merge(OmegaConf.structured(MWUFConfig), dict(inner_lr=0.3, cold_lr=0.7, hidden=6, **kw))
    algo = MWUF(cfg, model, "rating")
    algo.known = torch.tensor([True, True, True, True, False, False, False])  # items 4-6 are new
    with torch.no_grad():  # networks away from their identity start
        for p in algo.nets.parameters():
            p.copy_(torch.randn(p.shape, dtype=p.dtype) * 0.5)
    return model, algo


def reference_warm(algo, x, y):
    """One item's warmed embedding from its seen ratings (x [n, F], y [n]), with plain autograd."""
    model, params = algo.model, dict(algo.model.named_parameters())
    item = x[0, -1 - GENRES.shape[1]]
    start = params[ITEM].detach()[algo.known].mean(0).clone().requires_grad_(True)
    table = params[ITEM].index_put((item[None],), start[None])
    loss = ((functional_call(model, {**params, ITEM: table}, (x,)) - y) ** 2).mean()
    (grad,) = torch.autograd.grad(loss, start)
    e_cold = (start - algo.cfg.cold_lr * grad).detach()
    enc = model.encoder
    users = torch.cat([enc.embeddings[f](x[:, i]) for i, f in enumerate(("gender", "age", "occupation", "zip"))], -1)
    genres = GENRES[item].double()
    feat = torch.cat([enc.embeddings["year"].weight[YEAR[item]], genres @ enc.multi.weight / genres.sum().clamp(min=1)])
    return e_cold * algo.nets.scale(feat.detach()) + algo.nets.shift(users.mean(0).detach()), table, item


def reference_loss(algo, batch):
    model, params = algo.model, dict(algo.model.named_parameters())
    losses = []
    for i in range(batch.n_tasks):
        a, b = batch.support_mask[i].bool(), batch.query_mask[i].bool()
        e, _, item = reference_warm(algo, batch.support_x[i][a], batch.support_y[i][a])
        table = params[ITEM].index_put((item[None],), e[None])
        pred = functional_call(model, {**params, ITEM: table}, (batch.query_x[i][b],))
        losses.append(((pred - batch.query_y[i][b]) ** 2).mean())
    return torch.stack(losses).mean()


def test_warm_loss_and_its_meta_gradient_equal_a_per_item_loop():
    _, algo = make()
    batch = all_items_batch()
    nets = list(algo.nets.parameters())
    assert_same_loss_and_gradients(algo.meta_loss(batch), reference_loss(algo, batch), nets)


def test_evaluation_writes_warmed_rows_for_visible_new_items_and_scaled_means_for_the_rest():
    model, algo = make()
    item_row = torch.tensor([3, 4, 4, 0, 4, 3, 2])  # raw item rows (table row - 1): items 4 and 5 are seen
    x, y = show_visible(algo, item_row)
    algo.enter_state("user_item_cold")
    ids, rows = algo.warmed
    assert ids.tolist() == [4, 5]
    for item, got in zip((4, 5), rows):
        here = item_row + 1 == item
        want, _, _ = reference_warm(algo, x[here], y[here])
        assert torch.allclose(got, want, atol=1e-10, rtol=0)
    batch = task_batch(torch.tensor([[6, 4, 1]]), torch.tensor([[5, 2]]))
    table = algo.cold_table(batch)
    assert torch.equal(table[4], rows[0]) and torch.equal(table[1], model.get_parameter(ITEM)[1].detach())
    scale = algo.nets.scale(torch.cat([model.encoder.embeddings["year"].weight[YEAR[6]], torch.zeros(5, dtype=torch.float64)]))
    assert torch.allclose(table[6], algo.start() * scale + algo.nets.shift(torch.zeros(20, dtype=torch.float64)), atol=1e-12)


def test_phase_two_trains_the_meta_networks_alone():
    model, algo = make(pretrain_steps=0, items_per_step=3)
    items = torch.arange(1, N_ITEMS + 1)
    item_batch = task_batch(items[:, None].expand(-1, 4), items[:, None].expand(-1, 4), seed=3)
    algo.items = types.SimpleNamespace(sample=lambda n, gen: item_batch.select(slice(0, n)))
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    nets = [p.detach().clone() for p in algo.nets.parameters()]
    algo.step(None)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters())
    assert not all(torch.equal(p, b) for p, b in zip(algo.nets.parameters(), nets))


def test_bad_settings_are_refused():
    with pytest.raises(UserError, match="algo.hidden=0"):  # its rule, beside the field
        check_nodes(algo=OmegaConf.merge(OmegaConf.structured(MWUFConfig), {"hidden": 0}))
