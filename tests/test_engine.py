"""The vectorized meta-gradient equals the plain per-task loop (the gradient oracle)."""
import pytest
import torch
from fixtures import SPEC, fast_options, image_batch, rating_batch, sinusoid_batch
from metarec.bench.reference import per_task_meta_loss
from omegaconf import OmegaConf

from metarec.algos.maml import MAML
from metarec.engine import InnerLoop
from metarec.engine.groups import length_groups
from metarec.models.melu import MeLU


def make(inner_params="mlp", first_order=False, steps=1, learn_inner_lr=False, prompt=(0, 0), dtype=torch.float64):
    torch.manual_seed(0)
    model = MeLU(SPEC, embedding_dim=6, hidden=[8, 8], prompt_len=prompt[0], prompt_dim=prompt[1]).to(dtype)
    cfg = OmegaConf.create(dict(inner_lr=0.3, inner_steps=steps, first_order=first_order, inner_params=inner_params,
                                meta_lr=1e-3, learn_inner_lr=learn_inner_lr, weight_decay=0.0))
    return model, MAML(cfg, model, "rating")


def grads_of(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("path", ["fast", "core only"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("inner_params", ["mlp", "all"])
def test_vectorized_meta_gradient_equals_per_task_loop(steps, first_order, inner_params, path):
    """The fast path here is the hand MLP (mlp) or the hand fields (all); second order, the written pass back."""
    model, algo = make(inner_params, first_order, steps)
    algo = with_option(algo, "core" if path == "core only" else {})
    batch = rating_batch()
    params = list(model.parameters())
    fast_grads = grads_of(algo.meta_loss(batch), params)
    ref_grads = grads_of(per_task_meta_loss(model, algo.engine.inner_names, batch, "rating", 0.3, steps, first_order), params)
    for (name, _), a, b in zip(model.named_parameters(), fast_grads, ref_grads):
        a = torch.zeros(()) if a is None else a
        b = torch.zeros(()) if b is None else b
        assert torch.allclose(a, b, atol=1e-10, rtol=0), name


def test_float32_meta_gradient_within_1e5():
    model, algo = make("mlp", False, 3, dtype=torch.float32)
    batch = rating_batch(dtype=torch.float32)
    params = list(model.parameters())
    a = grads_of(algo.meta_loss(batch), params)
    b = grads_of(per_task_meta_loss(model, algo.engine.inner_names, batch, "rating", 0.3, 3, False), params)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-5, rtol=1e-4)


def test_second_order_differs_from_first_order():
    batch = rating_batch()
    model, second = make("mlp", False, 3)
    _, first = make("mlp", True, 3)
    first.model.load_state_dict(model.state_dict())
    g2 = grads_of(second.meta_loss(batch), list(model.parameters()))
    g1 = grads_of(first.meta_loss(batch), list(first.model.parameters()))
    diff = max((a - b).abs().max().item() for a, b in zip(g1, g2))
    assert diff > 1e-6


def test_meta_sgd_learned_rates_get_gradient_and_match_oracle():
    model, algo = make("mlp", False, 2, learn_inner_lr=True)
    batch = rating_batch()
    lrs = list(algo.inner_lrs.parameters())
    loss = algo.meta_loss(batch)
    g = grads_of(loss, lrs)
    assert all(x is not None and x.abs().sum() > 0 for x in g)
    ref = per_task_meta_loss(model, algo.engine.inner_names, batch, "rating", algo.inner_lr(), 2, False)
    assert torch.allclose(loss, ref, atol=1e-12)


def test_encoder_runs_once_when_only_the_head_adapts():
    _, algo = make("mlp")
    assert algo.engine.head_only
    _, algo = make("all")
    assert not algo.engine.head_only
    assert "encoder.embeddings.gender.weight" in algo.engine.inner_names


# ---- every speed option of the engine against the same oracle ---------------------------------------

SPEED_OPTIONS = {  # the engine's paths: the core alone (trainer.fast_paths=false) and the fast path's variants
    "fast: Gram first layer, written second order": {},
    "fast: explicit first layer": {"gram": False},
    "fast: one group per length": {"group_cost": 0},
    "core only": "core",
}


def with_option(algo, option):
    from metarec.engine import Engine
    if option == "core":
        algo.engine = Engine(algo.model, algo.engine.inner_names, algo.kind, fast_paths=False)
        assert algo.engine.fast is None
    else:
        assert algo.engine.fast is not None
        fast_options(algo.engine.fast, **option)
    return algo


@pytest.mark.parametrize("option", list(SPEED_OPTIONS))
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("learn_inner_lr", [False, True])
def test_every_speed_option_equals_the_oracle(option, first_order, learn_inner_lr):
    model, algo = make("mlp", first_order, 3, learn_inner_lr=learn_inner_lr)
    algo = with_option(algo, SPEED_OPTIONS[option])
    batch = rating_batch(n_tasks=6, support=(1, 9))
    params = list(model.parameters()) + (list(algo.inner_lrs.parameters()) if learn_inner_lr else [])
    a = grads_of(algo.meta_loss(batch), params)
    b = grads_of(per_task_meta_loss(model, algo.engine.inner_names, batch, "rating", algo.inner_lr(), 3, first_order), params)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-10, rtol=0)


@pytest.mark.parametrize("option", list(SPEED_OPTIONS))
def test_evaluation_trace_is_the_same_on_every_path(option):
    model, algo = make("mlp", False, 2)
    batch = rating_batch(n_tasks=6, support=(1, 9))
    want = MAML(algo.cfg, model, "rating").adapt_trace(batch, 3)
    want_core = with_option(MAML(algo.cfg, model, "rating"), "core").adapt_trace(batch, 3)
    got = with_option(algo, SPEED_OPTIONS[option]).adapt_trace(batch, 3)
    for a, b, c in zip(want, want_core, got):
        assert torch.allclose(a, b, atol=1e-10, rtol=0) and torch.allclose(a, c, atol=1e-10, rtol=0)


def test_fast_path_is_used_where_the_model_declares_it():
    from metarec.engine import Engine
    from metarec.engine.groups import HandPath
    from metarec.engine.hand import HandFieldsMLP, HandMLP
    from metarec.models.conv4 import Conv4
    model, algo = make("mlp")
    assert isinstance(algo.engine.fast.hand, HandMLP)
    assert isinstance(make("all")[1].engine.fast.hand, HandFieldsMLP)
    assert Engine(model, ["head.net.0.weight"], "classification").fast is None  # cross-entropy: the core path
    assert Engine(model, ["head.net.0.weight"], "rating", fast_paths=False).fast is None
    with pytest.raises(ValueError):
        HandPath(model, ["head.net.0.weight"], "classification", features=None)
    conv = Conv4({"ways": 3}, channels=4)
    assert Engine(conv, [n for n, _ in conv.named_parameters()], "rating").fast is None  # declares no form
    factors = MeLU({**SPEC, "factors": torch.randn(7, 2)}, embedding_dim=6, hidden=[8, 8])
    assert isinstance(Engine(factors, factors.param_groups()["all"], "rating").fast.hand, HandFieldsMLP)  # fixed rows joined
    assert Engine(factors, factors.param_groups()["mlp"], "rating").fast is not None


@pytest.mark.parametrize("prompt", [(0, 0), (2, 3)])
@pytest.mark.parametrize("inner_params", ["mlp", "all"])
def test_the_declared_form_computes_what_the_model_computes(inner_params, prompt):
    """What the engine writes out from the model's declaration (forms.py) gives the module's own output."""
    model, algo = make(inner_params, prompt=prompt)
    engine, params, batch = algo.engine, algo.params(), rating_batch()
    h = engine.features(params, batch.support_x)
    want = torch.stack([engine.module(h[i]) for i in range(batch.n_tasks)])
    assert torch.allclose(engine.fast.predict(params, {}, h), want, atol=1e-12, rtol=0)


def test_the_sinusoid_mlp_declares_its_form():
    from metarec.models.mlp import MLP
    torch.manual_seed(0)
    model = MLP({"in_dim": 1}, hidden=(8, 8), prompt_len=2, prompt_dim=3).double()
    engine = MAML(OmegaConf.create(dict(inner_lr=0.3, inner_steps=1, first_order=False, inner_params="all", meta_lr=1e-3,
                                        learn_inner_lr=False, weight_decay=0.0)), model, "regression").engine
    x = torch.randn(3, 5, 1, dtype=torch.float64)
    want = torch.stack([model(x[i]) for i in range(3)])
    assert torch.allclose(engine.fast.predict(dict(model.named_parameters()), {}, x), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("option", list(SPEED_OPTIONS))
@pytest.mark.parametrize("first_order", [False, True])
def test_every_speed_option_equals_the_oracle_when_everything_adapts(option, first_order):
    """algo.inner_params=all: per-task embedding tables (MeLU's fields, pooled genres) and the MLP."""
    spec = {**SPEC, "fields": SPEC["fields"] + [["item", 30]]}  # item ids: shared, never adapted
    torch.manual_seed(0)
    model = MeLU(spec, embedding_dim=6, hidden=[8, 8]).double()
    cfg = OmegaConf.create(dict(inner_lr=0.3, inner_steps=3, first_order=first_order, inner_params="all", meta_lr=1e-3,
                                learn_inner_lr=False, weight_decay=0.0))
    algo = with_option(MAML(cfg, model, "rating"), SPEED_OPTIONS[option])
    batch = rating_batch(n_tasks=6, support=(1, 9), spec=spec)
    params = list(model.parameters())
    a = grads_of(algo.meta_loss(batch), params)
    b = grads_of(per_task_meta_loss(model, algo.engine.inner_names, batch, "rating", 0.3, 3, first_order), params)
    for (name, _), x, y in zip(model.named_parameters(), a, b):
        assert torch.allclose(x, y, atol=1e-10, rtol=0), name


# ---- second order with the pass back written out (SecondOrderMAML) -----------------------------------

def count_written(monkeypatch) -> list:
    """Records each length group that the written-out second-order pass runs (its support input's shape)."""
    from metarec.engine.second_order import SecondOrderMAML
    calls, apply = [], SecondOrderMAML.apply
    monkeypatch.setattr(SecondOrderMAML, "apply", lambda *args: calls.append(tuple(args[4].shape)) or apply(*args))
    return calls


def prompt_theta(steps):
    """algo=prompt, adapt=theta: the MLP adapts, the prompt (joined to a0 and aq0) is meta-learned only."""
    from metarec.algos.prompt import Prompt
    model, algo = make("mlp", False, steps, prompt=(2, 3))
    return model, Prompt(OmegaConf.merge(algo.cfg, {"adapt": "theta"}), model, "rating")


WRITTEN_CASES = {  # name -> (steps, model and algo, engine options); ragged support (1-9) and query (2-5) sizes
    "mlp, 1 step": (1, lambda s: make("mlp", False, s), {}),
    "mlp, 3 steps": (3, lambda s: make("mlp", False, s), {}),
    "mlp, 5 steps, one group per length": (5, lambda s: make("mlp", False, s), {"group_cost": 0}),
    "prompt adapt=theta, 3 steps": (3, prompt_theta, {}),
    "prompt adapt=theta, 2 steps, one group per length": (2, prompt_theta, {"group_cost": 0}),
}


@pytest.mark.parametrize("case", list(WRITTEN_CASES))
def test_written_second_order_equals_the_oracle(case, monkeypatch):
    """Every meta-gradient (encoder tables through the support and query features, prompt, each MLP layer)
    equals the per-task loop's, and autograd's through the written-out inner loop, to 1e-10; the
    written pass ran, for every length group."""
    steps, build, options = WRITTEN_CASES[case]
    model, algo = build(steps)
    fast_options(algo.engine.fast, **options)
    calls = count_written(monkeypatch)
    batch = rating_batch(n_tasks=7, support=(1, 9))
    params = list(model.parameters())
    got = grads_of(algo.meta_loss(batch), params)
    n_groups = len(length_groups(batch.support_mask, algo.engine.fast.group_cost))
    assert len(calls) == n_groups and (n_groups > 1) == bool(options)
    want = grads_of(per_task_meta_loss(model, algo.engine.inner_names, batch, "rating", 0.3, steps, False), params)
    fast_options(algo.engine.fast, written_backward=False)
    autograd = grads_of(algo.meta_loss(batch), params)
    assert len(calls) == n_groups
    for (name, _), a, b, c in zip(model.named_parameters(), got, want, autograd):
        assert b.abs().max() > 0, name  # every parameter gets a meta-gradient here
        assert torch.allclose(a, b, atol=1e-10, rtol=0) and torch.allclose(a, c, atol=1e-10, rtol=0), name


FALLBACK_CASES = {  # name -> make() arguments and engine options: the engine's other paths, as before
    "first order": (dict(first_order=True), {}),
    "meta-sgd learned rates": (dict(learn_inner_lr=True), {}),
    "explicit first layer": ({}, {"gram": False}),
    "inner_params=last": (dict(inner_params="last"), {}),
    "inner_params=all": (dict(inner_params="all"), {}),
    "prompt adapt=prompt": (dict(inner_params="prompt", prompt=(2, 3)), {}),
}


@pytest.mark.parametrize("case", list(FALLBACK_CASES))
def test_written_second_order_is_not_used_where_it_does_not_apply(case, monkeypatch):
    kw, options = FALLBACK_CASES[case]
    model, algo = make(**{"steps": 2, **kw})
    fast_options(algo.engine.fast, **options)
    calls = count_written(monkeypatch)
    batch = rating_batch(n_tasks=6, support=(1, 9))
    params = list(model.parameters()) + (list(algo.inner_lrs.parameters()) if algo.inner_lrs is not None else [])
    a = grads_of(algo.meta_loss(batch), params)
    b = grads_of(per_task_meta_loss(model, algo.engine.inner_names, batch, "rating", algo.inner_lr(), 2,
                                    algo.cfg.first_order), params)
    assert calls == []
    for x, y in zip(a, b):
        x = torch.zeros(()) if x is None else x
        y = torch.zeros(()) if y is None else y
        assert torch.allclose(x, y, atol=1e-10, rtol=0)


def test_adapt_predict_is_predict_after_adapt_on_unsorted_tasks(monkeypatch):
    """Engine.adapt_predict on tasks in no particular order (the engine sorts them into groups and back):
    the same query predictions and the same gradients, to theta and to the query features, as
    predict(adapt(...)) with autograd through the written-out inner loop."""
    model, algo = make("mlp", False, 3)
    engine, params = algo.engine, algo.params()
    engine.fast.group_cost = 0
    batch = rating_batch(n_tasks=8, support=(1, 9), seed=3)
    assert bool((batch.support_mask.sum(1).diff() < 0).any())  # not sorted
    h_query = engine.features(params, batch.query_x).detach().requires_grad_(True)
    calls = count_written(monkeypatch)
    args = (params, None, batch.support_y, batch.support_mask, InnerLoop(0.3, 3))
    got = engine.adapt_predict(*args, h_query, x=batch.support_x)
    assert len(calls) > 1
    want = engine.predict(params, engine.adapt(*args, x=batch.support_x), h_query)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
    weights = torch.randn(got.shape, dtype=got.dtype, generator=torch.Generator().manual_seed(0))
    inputs = [h_query, *model.parameters()]
    for a, b in zip(grads_of((got * weights).sum(), inputs), grads_of((want * weights).sum(), inputs)):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


@pytest.mark.slow
def test_compiled_engine_equals_the_oracle():
    """trainer.compile=true (torch.compile of the inner gradient): slow to compile on a CPU."""
    torch.manual_seed(0)
    model = MeLU(SPEC, embedding_dim=6, hidden=[8, 8]).double()
    cfg = OmegaConf.create(dict(inner_lr=0.3, inner_steps=3, first_order=False, inner_params="mlp", meta_lr=1e-3,
                                learn_inner_lr=False, weight_decay=0.0))
    algo = MAML(cfg, model, "rating", compile=True)
    fast_options(algo.engine.fast, written_backward=False)  # second order through the compiled inner loop, not SecondOrderMAML
    batch = rating_batch(n_tasks=6, support=(1, 9))
    a = grads_of(algo.meta_loss(batch), list(model.parameters()))
    b = grads_of(per_task_meta_loss(model, algo.engine.inner_names, batch, "rating", 0.3, 3, False), list(model.parameters()))
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-10, rtol=0)


@pytest.mark.parametrize("task_loop", [True, False])
@pytest.mark.parametrize("first_order", [False, True])
def test_conv4_task_loop_and_vmap_equal_the_oracle(task_loop, first_order):
    """Off the hand path a conv net on a CPU runs its forward one task at a time (the default there);
    vmap stays available; both give the oracle's meta-gradient and the same evaluation trace."""
    from metarec.engine import Engine
    from metarec.models.conv4 import Conv4
    torch.manual_seed(0)
    model = Conv4({"ways": 3}, channels=4).double()
    cfg = OmegaConf.create(dict(inner_lr=0.3, inner_steps=2, first_order=first_order, inner_params="all",
                                meta_lr=1e-3, learn_inner_lr=False, weight_decay=0.0))
    algo = MAML(cfg, model, "classification")
    assert algo.engine.task_loop  # the default for a conv net on a CPU
    want_trace = algo.adapt_trace(image_batch(n_tasks=3), 2)
    algo.engine = Engine(model, algo.engine.inner_names, "classification")
    algo.engine.use_task_loop(task_loop)
    batch = image_batch(n_tasks=3)
    params = list(model.parameters())
    a = grads_of(algo.meta_loss(batch), params)
    b = grads_of(per_task_meta_loss(model, algo.engine.inner_names, batch, "classification", 0.3, 2, first_order), params)
    for (name, _), x, y in zip(model.named_parameters(), a, b):
        assert torch.allclose(x, y, atol=1e-10, rtol=0), name
    for x, y in zip(algo.adapt_trace(batch, 2), want_trace):
        assert torch.allclose(x, y, atol=1e-10, rtol=0)
    assert not MAML(cfg, MeLU(SPEC, embedding_dim=6, hidden=[8, 8]).double(), "rating").engine.task_loop


def reptile_case(case, device="cpu", **kw):
    """(algo, a copy of its model for the reference, batch, kind): MeLU's head or all of MeLU (hand path,
    ratings), the sinusoid MLP (hand path, regression), Conv4 (vmap, cross-entropy); float64, on `device`."""
    from metarec.algos.reptile import Reptile, ReptileConfig
    from metarec.models.conv4 import Conv4
    from metarec.models.mlp import MLP
    torch.manual_seed(0)
    build, kind, batch, inner_params = {
        "melu mlp": (lambda: MeLU(SPEC, embedding_dim=6, hidden=[8, 8]), "rating", rating_batch(n_tasks=6, support=(1, 9)), "mlp"),
        "melu all": (lambda: MeLU(SPEC, embedding_dim=6, hidden=[8, 8]), "rating", rating_batch(n_tasks=6, support=(1, 9)), "all"),
        "sinusoid mlp": (lambda: MLP({"in_dim": 1}, hidden=(8, 8)), "regression", sinusoid_batch(), "all"),
        "conv4": (lambda: Conv4({"ways": 3}, channels=4), "classification", image_batch(n_tasks=3), "all"),
    }[case]
    cfg = OmegaConf.structured(ReptileConfig(**{**dict(inner_lr=0.3, inner_steps=3, inner_params=inner_params,
                                                       meta_lr=1e-3, weight_decay=0.0, outer="adam"), **kw}))
    model, reference_model = build().double().to(device), build().double().to(device)
    reference_model.load_state_dict(model.state_dict())
    algo = Reptile(cfg, model, kind)  # built on the device: off the CPU conv4 runs through vmap
    assert (algo.engine.fast is None) == (case == "conv4")  # both paths of the engine are covered
    return algo, reference_model, batch.to(device), kind


REPTILE_CASES = ["melu mlp", "melu all", "sinusoid mlp", "conv4"]
# Adam with beta1 = 0 (the Reptile paper's) and beta1 > 0 (so that the first moment's bias correction counts);
INNER = {"sgd": dict(inner_optimizer="sgd"),
         "adam": dict(inner_optimizer="adam", inner_lr=0.01, inner_betas=[0.0, 0.999]),
         "adam beta1": dict(inner_optimizer="adam", inner_lr=0.01, inner_betas=[0.9, 0.99])}


@pytest.mark.parametrize("inner", list(INNER))
@pytest.mark.parametrize("case", REPTILE_CASES)
def test_reptile_step_equals_the_per_task_reference(case, inner):
    """Vectorized Reptile (SGD, or Adam with per-task moments) = a loop over tasks (torch.optim.Adam per task)."""
    from metarec.bench.reference import per_task_reptile_step
    algo, reference_model, batch, kind = reptile_case(case, **INNER[inner])
    algo.optimizer.step = lambda: None  # compare the gradients the update is made of
    algo.step(batch)
    per_task_reptile_step(reference_model, algo.engine.inner_names, batch, kind, algo.cfg.inner_lr, algo.cfg.inner_steps,
                          algo.inner_adam())
    for (name, p), q in zip(algo.model.named_parameters(), reference_model.parameters()):
        a = torch.zeros(()) if p.grad is None else p.grad
        b = torch.zeros(()) if q.grad is None else q.grad
        # BatchNorm cancels Conv4's conv biases: their gradient is 0 up to rounding (~1e-16), which Adam
        # divides by eps = 1e-8; both sides leave them within steps * lr * 1e-6 of theta, not 1e-10 of each other
        cancelled = case == "conv4" and ".conv" in name and name.endswith("bias") and algo.inner_adam() is not None
        assert torch.allclose(a, b, atol=algo.cfg.inner_steps * algo.cfg.inner_lr * 1e-6 if cancelled else 1e-10, rtol=0), name
    assert min(p.grad.abs().max() for n, p in algo.model.named_parameters() if n.endswith("weight")) > 1e-4  # theta moved


@pytest.mark.parametrize("case", ["melu all", "conv4"])
def test_reptile_evaluation_adapts_with_the_inner_adam(case):
    """adapt_trace (what evaluation scores) takes Adam steps too: step k's query predictions are those of
    torch.optim.Adam after k steps on the task's support set."""
    from torch.func import functional_call

    from metarec.bench.reference import per_task_adapt
    algo, model, batch, kind = reptile_case(case, **INNER["adam beta1"])
    trace = algo.adapt_trace(batch, 3)
    sgd = reptile_case(case, inner_optimizer="sgd", inner_lr=0.01)[0].adapt_trace(batch, 3)
    assert len(trace) == 4 and not torch.allclose(trace[3], sgd[3], atol=1e-6)
    for i in range(batch.n_tasks):
        s, q = batch.support_mask[i].bool(), batch.query_mask[i].bool()
        for k in range(4):
            fast = per_task_adapt(model, algo.engine.inner_names, batch.support_x[i][s], batch.support_y[i][s], kind,
                                  0.01, k, algo.inner_adam())
            with torch.no_grad():
                want = functional_call(model, {**dict(model.named_parameters()), **fast}, (batch.query_x[i][q],))
            assert torch.allclose(trace[k][i][q], want, atol=1e-10, rtol=0), (i, k)

