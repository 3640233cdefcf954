"""algo=ridge: the batched closed-form solve against per-task least squares, a hand-computed case, the
meta-gradient against a plain per-task loop, evaluation, refusals, and a run through the console script."""
import pytest
import torch
from conftest import read_json, run_cli
from fixtures import SPEC, check_nodes, rating_batch, sinusoid_batch
from omegaconf import OmegaConf

from metarec.algos import ALGOS
from metarec.algos.ridge import RidgeConfig
from metarec.errors import UserError
from metarec.models.melu import MeLU
from metarec.models.mlp import MLP


def ridge_cfg(**kw):
    """algo=ridge's settings from the schema's defaults (lambda 10, lambda_b 3, learned), not a copy of them."""
    return OmegaConf.structured(RidgeConfig(**kw))


def make(**kw):
    torch.manual_seed(0)
    model = MeLU(SPEC, embedding_dim=6, hidden=[8, 8]).double()
    with torch.no_grad():
        model.head.net[-1].bias.fill_(0.2)  # a non-zero prior bias, so its pull shows
    return model, ALGOS["ridge"](ridge_cfg(**kw), model, "rating")


def per_task_weights(algo, x, y):
    """One task's ridge weights from its unpadded data, as a stacked least-squares problem."""
    phi = algo.features(x)
    lam = algo.log_prior.exp()
    design = torch.cat([phi, torch.diag(lam.sqrt())])
    target = torch.cat([y - algo.model.output_offset(), lam.sqrt() * algo.prior()])
    return torch.linalg.solve(design.T @ design, design.T @ target)


def test_the_batched_solve_is_each_tasks_least_squares_optimum():
    model, algo = make()
    batch = rating_batch(n_tasks=5, support=(2, 9))  # ragged: padding must not count
    w = algo.solve(algo.features(batch.support_x), batch.support_y, batch.support_mask)
    for i in range(batch.n_tasks):
        m = batch.support_mask[i].bool()
        x, y = batch.support_x[i][m], batch.support_y[i][m]
        assert torch.allclose(w[i], per_task_weights(algo, x, y), atol=1e-10, rtol=0), i
        # and the objective's gradient vanishes there
        wi = w[i].detach().requires_grad_(True)
        phi = algo.features(x).detach()
        lam, w0 = algo.log_prior.exp().detach(), algo.prior().detach()
        objective = ((y - model.head.offset - phi @ wi) ** 2).sum() + (lam * (wi - w0) ** 2).sum()
        assert torch.autograd.grad(objective, wi)[0].abs().max() < 1e-10


def test_with_the_weights_pinned_it_is_the_bias_floors_shrunk_user_bias():
    """lambda_w -> inf keeps the weights at w0 = 0: the bias becomes (sum_j r_j + lambda_b b0) / (n + lambda_b)."""
    model, algo = make(prior_precision=1e12, prior_precision_bias=3.0)
    with torch.no_grad():
        model.head.net[-1].weight.zero_()
    batch = rating_batch(n_tasks=3)
    pred = algo.adapt_trace(batch, 1)[1]
    for i in range(3):
        m = batch.support_mask[i].bool()
        r = batch.support_y[i][m] - 3.5
        bias = (r.sum() + 3.0 * 0.2) / (m.sum() + 3.0)
        qm = batch.query_mask[i].bool()
        assert torch.allclose(pred[i][qm], torch.full_like(pred[i][qm], 3.5 + bias.item()), atol=1e-9)


def per_task_meta_gradient(algo, batch, params):
    """The meta-gradient of a plain loop over tasks, each solved on its own unpadded data."""
    losses = []
    for i in range(batch.n_tasks):
        sm, qm = batch.support_mask[i].bool(), batch.query_mask[i].bool()
        w = per_task_weights(algo, batch.support_x[i][sm], batch.support_y[i][sm])
        pred = algo.model.output_offset() + algo.features(batch.query_x[i][qm]) @ w
        losses.append(((pred - batch.query_y[i][qm]) ** 2).mean())
    return torch.autograd.grad(torch.stack(losses).mean(), params)


def test_meta_gradient_equals_a_per_task_loop():
    model, algo = make()
    batch = rating_batch(n_tasks=4, support=(2, 9), query=(1, 5))
    params = algo.meta_parameters()
    assert params[-1] is algo.log_prior  # lambda is meta-learned
    got = torch.autograd.grad(algo.meta_loss(batch), params)
    want = per_task_meta_gradient(algo, batch, params)
    for n, a, b in zip([n for n, _ in model.named_parameters()] + ["log_prior"], got, want):
        assert torch.allclose(a, b, atol=1e-10, rtol=0), n
    assert got[-1].abs().sum() > 0


def test_a_step_moves_lambda_only_when_it_is_learned():
    for learn in (True, False):
        model, algo = make(learn_prior=learn)
        before = algo.log_prior.detach().clone()
        algo.step(rating_batch(n_tasks=4))
        assert (not torch.equal(before, algo.log_prior.detach())) == learn


def test_evaluation_shows_the_prior_then_the_solution():
    model, algo = make()
    batch = rating_batch(n_tasks=4)
    trace = algo.adapt_trace(batch, 3)
    assert len(trace) == 4
    assert torch.allclose(trace[0], model(batch.query_x), atol=1e-12)  # step 0: the model itself
    for i in range(batch.n_tasks):  # after a step: each task's own least-squares weights, solved alone
        sm, qm = batch.support_mask[i].bool(), batch.query_mask[i].bool()
        w = per_task_weights(algo, batch.support_x[i][sm], batch.support_y[i][sm])
        want = model.output_offset() + algo.features(batch.query_x[i][qm]) @ w
        assert torch.allclose(trace[1][i][qm], want, atol=1e-10), i
    assert all(torch.equal(trace[1], t) for t in trace[2:])  # the solve is exact: more steps, same answer
    assert [t.shape for t in algo.adapt_trace(batch, 3, at=[3])] == [trace[3].shape]


def test_state_dict_carries_lambda():
    model, algo = make()
    algo.step(rating_batch(n_tasks=4))
    state = algo.state_dict()
    _, fresh = make()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.log_prior, algo.log_prior)


def test_regression_models_work_and_classification_and_prompts_are_refused():
    torch.manual_seed(0)
    model = MLP({"in_dim": 1}, hidden=(8, 8)).double()
    algo = ALGOS["ridge"](ridge_cfg(), model, "regression")
    assert torch.isfinite(algo.meta_loss(sinusoid_batch())).item()
    with pytest.raises(ValueError, match="algo=ridge solves a squared error"):
        ALGOS["ridge"](ridge_cfg(), model, "classification")
    prompted = MeLU(SPEC, embedding_dim=6, hidden=[8], prompt_len=2, prompt_dim=3)
    with pytest.raises(ValueError, match="algo=ridge needs a head MLP with one output and no prompt vectors"):
        ALGOS["ridge"](ridge_cfg(), prompted, "rating")
    with pytest.raises(UserError, match=r"algo.prior_precision=0.0: must be > 0"):  # its rule, beside the field
        check_nodes(algo=ridge_cfg(prior_precision=0.0))
    from hydra.errors import ConfigCompositionException

    from metarec.config.compose import compose
    for setting, value in (("learn_inner_lr", "true"), ("first_order", "true"), ("inner_optimizer", "adam")):
        # gradient-step settings are not in ridge's schema: refused when the config is composed
        with pytest.raises(ConfigCompositionException, match=f"Could not override 'algo.{setting}'") as e:
            compose(["algo=ridge", f"algo.{setting}={value}"])
        assert f"Key '{setting}' not in 'RidgeConfig'" in str(e.value.__cause__)
    _, algo = make()
    assert not hasattr(algo, "engine")  # no inner gradient steps, so no engine to build


def test_a_singular_system_is_one_clear_line():
    """A learned lambda that collapsed to 0 on features that vanish: no solution, and the error says what to raise."""
    _, algo = make()
    with torch.no_grad():
        algo.log_prior.fill_(-float("inf"))
    phi = torch.zeros(2, 3, algo.log_prior.shape[0], dtype=torch.float64)
    with pytest.raises(UserError, match=r"algo=ridge: a user's least-squares system is singular .* raise algo.prior_precision"):
        algo.solve(phi, torch.ones(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64))


def test_ridge_trains_and_evaluates_through_the_console_script(tmp_path):
    run = tmp_path / "run"
    quick = ["algo=ridge", "data=sinusoid", "trainer.max_steps=300", "trainer.meta_batch_size=8", "trainer.val_every=100",
             "trainer.progress=false", "device=cpu", "device.threads=1", "data.n_val_tasks=20", "data.n_test_tasks=50"]
    r = run_cli("train", *quick, f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    result = read_json(run / "eval.json")["states"]
    steps = next(iter(result.values()))["steps"]
    assert steps["1"]["mse"] < steps["0"]["mse"]  # the per-task solve helps on sinusoids
    r = run_cli("eval", f"checkpoint={run / 'checkpoints' / 'best.pt'}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_json(tmp_path / "eval" / "eval.json")["states"] == result
