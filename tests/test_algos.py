"""Reptile, prompt and pretrain against closed forms and plain per-task loops."""
import dataclasses
import math

import pytest
import torch
from fixtures import SPEC, check_nodes, rating_batch
from omegaconf import OmegaConf
from torch.func import functional_call

from metarec.algos import ALGOS
from metarec.engine import InnerLoop, masked_task_loss
from metarec.errors import UserError
from metarec.models.melu import MeLU
from metarec.bench.reference import per_task_meta_loss


BASE = dict(inner_lr=0.3, inner_steps=1, first_order=False, inner_params="all", meta_lr=0.5,
            learn_inner_lr=False, weight_decay=0.0, outer="interpolate", adapt="theta")


def algo_cfg(name="maml", **kw):
    """Algorithm `name`'s schema with this file's settings (those of BASE it has) and kw."""
    schema = ALGOS[name].Config
    keys = {f.name for f in dataclasses.fields(schema)}
    return OmegaConf.structured(schema(**{**{k: v for k, v in BASE.items() if k in keys}, **kw}))


def make(name, prompt=(0, 0), **kw):
    torch.manual_seed(0)
    model = MeLU(SPEC, embedding_dim=6, hidden=[8, 8], prompt_len=prompt[0], prompt_dim=prompt[1]).double()
    if name == "prompt":
        kw.update(prompt_len=prompt[0], prompt_dim=prompt[1])
    return model, ALGOS[name](algo_cfg(name, **kw), model, "rating")


def plain_adapt(model, names, x, y, lr, steps):
    """SGD on one task's unpadded data with plain autograd."""
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(steps):
        fast = {n: params[n].requires_grad_(True) for n in names}
        pred = functional_call(model, {**params, **fast}, (x,))
        loss = ((pred - y) ** 2).mean()
        grads = torch.autograd.grad(loss, list(fast.values()))
        params.update({n: (w - lr * g).detach() for (n, w), g in zip(fast.items(), grads)})
    return params


def real(batch, i):
    data = batch.merged()
    m = data.support_mask[i].bool()
    return data.support_x[i][m], data.support_y[i][m]


def test_reptile_one_task_one_step_is_the_closed_form():
    model, algo = make("reptile", inner_steps=1)
    batch = rating_batch(n_tasks=1)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = real(batch, 0)
    adapted = plain_adapt(model, algo.engine.inner_names, x, y, 0.3, 1)
    algo.step(batch)
    for n, p in model.named_parameters():
        if n in algo.engine.inner_names:
            # theta + beta * (theta' - theta), theta' = theta - alpha * grad L(theta)
            expected = theta[n] + 0.5 * (adapted[n] - theta[n])
            assert torch.allclose(p.detach(), expected, atol=1e-12), n


def test_reptile_batch_is_the_mean_of_per_task_loops():
    model, algo = make("reptile", inner_steps=3)
    batch = rating_batch(n_tasks=4)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    per_task = [plain_adapt(model, algo.engine.inner_names, *real(batch, i), 0.3, 3) for i in range(4)]
    algo.step(batch)
    for n in algo.engine.inner_names:
        mean_delta = torch.stack([a[n] - theta[n] for a in per_task]).mean(0)
        assert torch.allclose(dict(model.named_parameters())[n].detach(), theta[n] + 0.5 * mean_delta, atol=1e-12), n


def test_reptile_adam_outer_feeds_the_difference_as_a_gradient():
    model, algo = make("reptile", inner_steps=2, outer="adam")
    assert isinstance(algo.optimizer, torch.optim.Adam)
    batch = rating_batch(n_tasks=3)
    before = [p.detach().clone() for p in model.parameters()]
    algo.step(batch)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("adapt", ["theta", "prompt"])
@pytest.mark.parametrize("first_order", [False, True])
def test_prompt_meta_gradient_equals_per_task_loop(adapt, first_order):
    model, algo = make("prompt", prompt=(2, 3), adapt=adapt, inner_params="mlp", inner_steps=2, first_order=first_order)
    batch = rating_batch()
    params = list(model.parameters())
    a = torch.autograd.grad(algo.meta_loss(batch), params, allow_unused=True)
    b = torch.autograd.grad(per_task_meta_loss(model, algo.engine.inner_names, batch, "rating", 0.3, 2, first_order),
                            params, allow_unused=True)
    for (n, _), x, y in zip(model.named_parameters(), a, b):
        x = torch.zeros(()) if x is None else x
        y = torch.zeros(()) if y is None else y
        assert torch.allclose(x, y, atol=1e-10, rtol=0), n
    prompt_grad = dict(zip([n for n, _ in model.named_parameters()], a))["head.prompt"]
    assert prompt_grad is not None and prompt_grad.abs().sum() > 0  # phi receives meta-gradient


def test_prompt_adapt_prompt_leaves_theta_untouched_in_the_inner_loop():
    model, algo = make("prompt", prompt=(2, 3), adapt="prompt", inner_params="mlp")
    assert algo.engine.inner_names == ["head.prompt"]
    batch = rating_batch()
    params = algo.params()
    h = algo.engine.features(params, batch.support_x)
    fast = algo.engine.adapt(params, h, batch.support_y, batch.support_mask, InnerLoop(0.3, 3))
    assert set(fast) == {"head.prompt"} and fast["head.prompt"].shape == (batch.n_tasks, 2, 3)
    # every task has its own prompt after adaptation, theta is shared and unchanged
    assert not torch.allclose(fast["head.prompt"][0], fast["head.prompt"][1])


def test_prompt_meta_sgd_learns_per_weight_rates():
    model, algo = make("prompt", prompt=(2, 3), adapt="prompt", learn_inner_lr=True)
    batch = rating_batch()
    loss = algo.meta_loss(batch)
    loss.backward()
    assert algo.inner_lrs["head__prompt"].grad.abs().sum() > 0


def test_pretrain_step_is_plain_supervised_training():
    model, algo = make("pretrain", inner_params="mlp")
    batch = rating_batch()
    data = batch.merged()
    pred = model(data.support_x)
    w = data.support_mask
    expected = (((pred - data.support_y) ** 2) * w).sum() / w.sum()
    names = [n for n, _ in model.named_parameters()]
    grads = dict(zip(names, torch.autograd.grad(expected, list(model.parameters()), allow_unused=True)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = algo.step(batch)
    assert stats["loss"] == pytest.approx(expected.item(), abs=1e-12)
    # Adam's first step written out (m = (1-b1) g, v = (1-b2) g^2, bias-corrected to g and g^2):
    # p - lr * g / (|g| + eps), with lr = meta_lr = 0.5 and eps = 1e-8
    moved = 0
    for n, p in model.named_parameters():
        g = grads[n] if grads[n] is not None else torch.zeros_like(before[n])
        expected_p = before[n] - 0.5 * g / (g.abs() + 1e-8)
        assert torch.allclose(p.detach(), expected_p, atol=1e-12, rtol=0), n
        moved += int(not torch.equal(p.detach(), before[n]))
    assert moved == len(names)  # every parameter group of the model learns, embeddings included


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_meta_gradient_equals_a_loop_written_here(first_order):
    """MAML's meta-gradient against the algorithm written out in this test (metarec/bench/reference.py is the
    package's own oracle): per task, SGD on the mean squared error of its real support ratings, then the
    query's; the mean over tasks; first order cuts the inner gradients out of the graph."""
    model, algo = make("maml", inner_params="mlp", inner_steps=2, first_order=first_order)
    batch = rating_batch(n_tasks=4)
    params = dict(model.named_parameters())
    losses = []
    for i in range(batch.n_tasks):
        s, q = batch.support_mask[i].bool(), batch.query_mask[i].bool()
        fast = {n: params[n] for n in algo.engine.inner_names}
        for _ in range(2):
            pred = functional_call(model, {**params, **fast}, (batch.support_x[i][s],))
            grads = torch.autograd.grad(((pred - batch.support_y[i][s]) ** 2).mean(), list(fast.values()),
                                        create_graph=not first_order)
            fast = {n: w - 0.3 * g for (n, w), g in zip(fast.items(), grads)}
        pred = functional_call(model, {**params, **fast}, (batch.query_x[i][q],))
        losses.append(((pred - batch.query_y[i][q]) ** 2).mean())
    want = torch.autograd.grad(torch.stack(losses).mean(), list(params.values()))
    got = torch.autograd.grad(algo.meta_loss(batch), list(params.values()), allow_unused=True)
    for n, a, b in zip(params, got, want):
        a = torch.zeros_like(b) if a is None else a
        assert torch.allclose(a, b, atol=1e-10, rtol=0), n
    assert sum(float(g.abs().sum()) for g in want) > 0


def test_inner_params_all_adapts_small_tables_not_item_ids():
    spec = {**SPEC, "fields": SPEC["fields"] + [["item", 50]]}
    model = MeLU(spec, embedding_dim=4, hidden=[8])
    names = model.param_groups()["all"]
    assert "encoder.embeddings.item.weight" not in names and "encoder.embeddings.age.weight" in names


def test_algorithms_do_not_assume_movielens():
    """MAML's vectorized meta-gradient on the sinusoid MLP and the Omniglot conv net equals the oracle."""
    from metarec.models.conv4 import Conv4
    from metarec.models.mlp import MLP
    from metarec.tasks import TaskBatch

    g = torch.Generator().manual_seed(0)
    cases = [
        (MLP({"in_dim": 1}, hidden=(8, 8)).double(), "regression",
         TaskBatch(torch.randn(3, 5, 1, generator=g).double(), torch.randn(3, 5, generator=g).double(), torch.ones(3, 5).double(),
                   torch.randn(3, 4, 1, generator=g).double(), torch.randn(3, 4, generator=g).double(), torch.ones(3, 4).double())),
        (Conv4({"ways": 3}, channels=4).double(), "classification",
         TaskBatch(torch.rand(2, 3, 1, 28, 28, generator=g).double(), torch.arange(3).repeat(2, 1), torch.ones(2, 3).double(),
                   torch.rand(2, 6, 1, 28, 28, generator=g).double(), torch.arange(3).repeat(2, 2), torch.ones(2, 6).double())),
    ]
    for model, kind, batch in cases:
        cfg = algo_cfg(inner_params="all", inner_steps=2, meta_lr=1e-3)
        algo = ALGOS["maml"](cfg, model, kind)
        params = list(model.parameters())
        a = torch.autograd.grad(algo.meta_loss(batch), params)
        b = torch.autograd.grad(per_task_meta_loss(model, algo.engine.inner_names, batch, kind, 0.3, 2, False), params)
        for x, y in zip(a, b):
            assert torch.allclose(x, y, atol=1e-10, rtol=0)
    # the shared loss is the only contract between data and algorithm: each task's mean over its own examples
    pred, y = torch.tensor([[1.0, 2.0, 9.0], [0.0, 4.0, 4.0]]), torch.tensor([[2.0, 4.0, 0.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert masked_task_loss(pred, y, mask, "regression").tolist() == pytest.approx([(1 + 4) / 2, (1 + 9 + 9) / 3])
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    ce = masked_task_loss(logits, torch.tensor([[1, 1]]), torch.tensor([[1.0, 1.0]]), "classification")
    assert ce.item() == pytest.approx((math.log(2) + math.log(1 + math.exp(2))) / 2, abs=1e-6)


@pytest.mark.parametrize("name", ["maml", "prompt", "pretrain"])
def test_inner_adam_is_reptiles_only(name):
    """The inner Adam's keys are in reptile's schema only: another algorithm refuses them at compose time."""
    from hydra.errors import ConfigCompositionException

    from metarec.config.compose import compose
    for setting in ("algo.inner_optimizer=adam", "algo.inner_betas=[0.9,0.999]"):
        with pytest.raises(ConfigCompositionException, match=f"Could not override '{setting.split('=')[0]}'") as e:
            compose([f"algo={name}", setting])
        assert f"not in '{ALGOS[name].Config.__name__}'" in str(e.value.__cause__)
    # their values: the rules beside reptile's schema fields
    with pytest.raises(UserError, match="algo.inner_optimizer='adamw' is not one of sgd, adam$"):
        check_nodes(algo=algo_cfg("reptile", inner_optimizer="adamw"))
    with pytest.raises(UserError, match=r"algo.inner_betas=\[0.9\]: must be two numbers in \[0, 1\)"):
        check_nodes(algo=algo_cfg("reptile", inner_optimizer="adam", inner_betas=[0.9]))


def test_reptile_outer_step_anneals_linearly_to_zero():
    """algo.anneal_steps=N: beta * (1 - k / N) at meta-step k (the paper's schedule); the clock is checkpointed."""
    model, algo = make("reptile", inner_steps=2, anneal_steps=4)
    batch = rating_batch(n_tasks=2)
    lrs = []
    for _ in range(4):
        algo.step(batch)
        lrs.append(algo.optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.5, 0.375, 0.25, 0.125])
    _, resumed = make("reptile", inner_steps=2, anneal_steps=4)
    resumed.load_state_dict(algo.state_dict())
    before = [p.detach().clone() for p in model.parameters()]
    for a in (algo, resumed):
        a.step(batch)
        assert a.optimizer.param_groups[0]["lr"] == 0.0 and a.meta_steps == 5
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # beta = 0: theta stays


def test_reptile_omniglot_preset_uses_the_papers_inner_adam():
    from metarec.config.compose import compose
    from metarec.run.train import build_model
    cfg = compose(["experiment=reptile_omniglot_5w1s", "trainer.max_steps=300"])
    algo = ALGOS["reptile"](cfg.algo, build_model(cfg.model, cfg.algo, {"ways": 5}), "classification")
    assert algo.inner_adam() == (0.0, 0.999) and cfg.algo.inner_lr == 1e-3 and cfg.algo.anneal_steps == 300
