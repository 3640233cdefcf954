"""The classic-benchmark models: shapes, inner parameter names, and vmap over per-task weights."""
import pytest
import torch
from torch.func import functional_call, grad, vmap

from metarec.algos.base import adapted_names
from metarec.models.conv4 import Conv4
from metarec.models.mlp import MLP


def per_task_params(module: torch.nn.Module, n_tasks: int, generator: torch.Generator) -> dict:
    """Every parameter of `module`, perturbed differently per task: {name: [tasks, ...]}."""
    return {name: p.detach() + 0.1 * torch.randn(n_tasks, *p.shape, generator=generator, dtype=p.dtype)
            for name, p in module.named_parameters()}


def loop_vs_vmap(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> None:
    """Outputs and per-task gradients: a Python loop over tasks (the oracle) against one vmap."""
    params = per_task_params(model.head, x.shape[0], torch.Generator().manual_seed(1))

    def loss(p, xi, yi):
        return loss_fn(functional_call(model.head, p, (xi,)), yi)

    out = vmap(lambda p, xi: functional_call(model.head, p, (xi,)))(params, x)
    grads = vmap(grad(loss))(params, x, y)
    for t in range(x.shape[0]):
        p_t = {k: v[t] for k, v in params.items()}
        torch.testing.assert_close(out[t], functional_call(model.head, p_t, (x[t],)), rtol=0, atol=1e-12)
        g_t = torch.func.grad(loss)(p_t, x[t], y[t])
        for k in params:
            torch.testing.assert_close(grads[k][t], g_t[k], rtol=0, atol=1e-10)


def test_mlp_shapes_and_names():
    model = MLP({"in_dim": 1})
    assert model(torch.randn(7, 1)).shape == (7,)
    assert isinstance(model.encoder, torch.nn.Identity)
    names = [n for n, _ in model.named_parameters()]
    assert names == ["head.net.0.weight", "head.net.0.bias", "head.net.2.weight", "head.net.2.bias",
                     "head.net.4.weight", "head.net.4.bias"]
    assert model.head.net[0].weight.shape == (40, 1) and model.head.net[2].weight.shape == (40, 40)
    groups = model.param_groups()
    assert groups["all"] == names == groups["mlp"]
    with pytest.raises(ValueError, match="prompt"):
        adapted_names(model, "prompt")
    with pytest.raises(ValueError, match="no such parameter group"):
        adapted_names(model, "decoder")


def test_mlp_prompt_is_a_parameter_and_is_used():
    torch.manual_seed(0)
    model = MLP({"in_dim": 1}, hidden=(16, 16), prompt_len=2, prompt_dim=3)
    assert model.head.prompt.shape == (2, 3)
    assert 0.02 < model.head.prompt.std().item() < 0.3  # N(0, 0.1) init
    assert model.head.net[0].weight.shape == (16, 1 + 6)
    assert model.param_groups()["prompt"] == ["head.prompt"]
    assert "head.prompt" in model.param_groups()["all"]
    x = torch.randn(5, 1)
    before = model(x)
    with torch.no_grad():
        model.head.prompt.add_(1.0)
    assert not torch.allclose(before, model(x))
    with pytest.raises(ValueError, match="both"):
        MLP({"in_dim": 1}, prompt_len=2, prompt_dim=0)


@pytest.mark.parametrize("prompt", [0, 4])
def test_mlp_vmap_matches_loop_float64(prompt):
    torch.manual_seed(0)
    model = MLP({"in_dim": 1}, prompt_len=prompt, prompt_dim=prompt).double()
    x = torch.randn(4, 6, 1, dtype=torch.float64)  # [tasks, shots, 1]
    y = torch.randn(4, 6, dtype=torch.float64)
    loop_vs_vmap(model, x, y, lambda pred, target: ((pred - target) ** 2).mean())


def test_conv4_shapes_and_names():
    model = Conv4({"ways": 5})
    assert model(torch.rand(10, 1, 28, 28)).shape == (10, 5)
    assert Conv4({"ways": 20}, channels=32)(torch.rand(3, 1, 28, 28)).shape == (3, 20)
    assert list(model.buffers()) == []  # batch statistics only: nothing to carry per task
    names = [n for n, _ in model.named_parameters()]
    assert model.param_groups()["all"] == names == model.param_groups()["mlp"]
    assert len(names) == 4 * 4 + 2 and names[-2:] == ["head.fc.weight", "head.fc.bias"]
    with pytest.raises(ValueError, match="no such parameter group"):
        adapted_names(model, "prompt")


def test_conv4_uses_batch_statistics_in_eval_mode():
    torch.manual_seed(0)
    model = Conv4({"ways": 5})
    x = torch.rand(6, 1, 28, 28)
    train_out = model.train()(x)
    torch.testing.assert_close(model.eval()(x), train_out)  # no running statistics to switch to
    assert not torch.allclose(model(x[:3]), train_out[:3])  # an example's output depends on its batch


def test_conv4_vmap_matches_loop_float64():
    torch.manual_seed(0)
    model = Conv4({"ways": 3}, channels=8).double()
    x = torch.rand(3, 6, 1, 28, 28, dtype=torch.float64)  # [tasks, ways*shots, 1, 28, 28]
    y = torch.randint(0, 3, (3, 6))
    loop_vs_vmap(model, x, y, torch.nn.functional.cross_entropy)
