"""The vectorized meta-gradient equals the plain per-task loop (the gradient oracle)."""
import pytest
import torch
from fixtures import SPEC, rating_batch
from metarec.reference import per_task_meta_loss
from omegaconf import OmegaConf

from metarec.algos.maml import MAML
from metarec.models.melu import MeLU


def make(inner_params="mlp", first_order=False, steps=1, learn_inner_lr=False, prompt=(0, 0), dtype=torch.float64):
    torch.manual_seed(0)
    model = MeLU(SPEC, embedding_dim=6, hidden=[8, 8], prompt_len=prompt[0], prompt_dim=prompt[1]).to(dtype)
    cfg = OmegaConf.create(dict(inner_lr=0.3, inner_steps=steps, first_order=first_order, inner_params=inner_params,
                                meta_lr=1e-3, learn_inner_lr=learn_inner_lr, weight_decay=0.0))
    return model, MAML(cfg, model, "rating")


def grads_of(loss, params):
    return torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("inner_params", ["mlp", "all"])
def test_vectorized_meta_gradient_equals_per_task_loop(steps, first_order, inner_params):
    model, algo = make(inner_params, first_order, steps)
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
