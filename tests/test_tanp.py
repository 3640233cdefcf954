"""TaNP: the vectorised loss and its gradient equal the plain per-task loop; padding has no effect;
evaluation shows one forward pass; it trains through the console script."""
import pytest
import torch
from conftest import needs_ml100k, read_json, run_cli, train_ml100k
from fixtures import SPEC, check_nodes, rating_batch
from omegaconf import OmegaConf

from metarec.algos import ALGOS
from metarec.algos.tanp import TaNP, TaNPConfig
from metarec.errors import UserError
from metarec.evaluation.evaluate import format_table
from metarec.models.melu import MeLU
from metarec.models.mlp import MLP
from metarec.tasks import TaskBatch


def make(modulation="film", dtype=torch.float64, **overrides):
    torch.manual_seed(0)
    model = MeLU(SPEC, embedding_dim=6, hidden=[8, 8])
    cfg = OmegaConf.merge(OmegaConf.structured(TaNPConfig), dict(modulation=modulation, **overrides))
    algo = TaNP(cfg, model, "rating")
    model.to(dtype), algo.net.to(dtype)
    return algo


def pad_more(batch: TaskBatch, extra: int, fill: int = 1) -> TaskBatch:
    """The same tasks with `extra` more padded rows in support and query (garbage inputs, mask 0)."""
    def grow(x, value):
        pad = torch.full((x.shape[0], extra, *x.shape[2:]), value, dtype=x.dtype)
        return torch.cat([x, pad], 1)
    return TaskBatch(grow(batch.support_x, fill), grow(batch.support_y, 5.0), grow(batch.support_mask, 0.0),
                     grow(batch.query_x, fill), grow(batch.query_y, 1.0), grow(batch.query_mask, 0.0))


@pytest.mark.parametrize("modulation", ["film", "gating"])
def test_vectorised_loss_and_gradient_equal_the_per_task_loop(modulation):
    algo = make(modulation)
    batch = rating_batch(n_tasks=5)
    eps = torch.randn(batch.n_tasks, algo.cfg.latent_dim, dtype=torch.float64)
    params = algo.meta_parameters()
    fast, ref = algo.meta_loss(batch, eps), algo.reference_loss(batch, eps)
    assert torch.allclose(fast, ref, atol=1e-12, rtol=0)
    grads = torch.autograd.grad(fast, params)
    for p, a, b in zip(params, grads, torch.autograd.grad(ref, params)):
        assert torch.allclose(a, b, atol=1e-10, rtol=0), p.shape
    assert all(float(g.abs().sum()) > 0 for g in grads[-len(list(algo.net.parameters())):])  # every part of the net learns


def test_the_loss_weights_count():
    batch = rating_batch(n_tasks=5)
    eps = torch.zeros(batch.n_tasks, 32, dtype=torch.float64)
    base = make().meta_loss(batch, eps)
    assert not torch.isclose(make(kl_weight=0.0).meta_loss(batch, eps), base)
    assert not torch.isclose(make(cluster_weight=0.0).meta_loss(batch, eps), base)


def test_padding_has_no_effect():
    algo = make("gating")
    batch = rating_batch(n_tasks=4)
    padded = pad_more(batch, 6)
    a, b = algo.adapt_trace(batch, 0)[0], algo.adapt_trace(padded, 0)[0]
    q = batch.query_y.shape[1]
    mask = batch.query_mask.bool()
    assert torch.allclose(a[mask], b[:, :q][mask], atol=1e-12, rtol=0)
    eps = torch.randn(batch.n_tasks, algo.cfg.latent_dim, dtype=torch.float64)
    assert torch.allclose(algo.meta_loss(batch, eps), algo.meta_loss(padded, eps), atol=1e-12, rtol=0)


def test_a_task_alone_predicts_what_it_predicts_in_a_batch():
    algo = make()
    batch = rating_batch(n_tasks=4)
    whole = algo.adapt_trace(batch, 0)[0]
    alone = algo.adapt_trace(batch.select(slice(2, 3)), 0)[0]
    assert torch.allclose(whole[2:3], alone, atol=1e-12, rtol=0)


def test_predictions_read_the_support_ratings():
    algo = make()
    batch = rating_batch(n_tasks=3)
    flipped = TaskBatch(batch.support_x, 6.0 - batch.support_y, *list(vars(batch).values())[2:])
    assert not torch.allclose(algo.adapt_trace(batch, 0)[0], algo.adapt_trace(flipped, 0)[0])


def test_every_step_is_the_same_forward_pass_and_the_state_dict_carries_the_net():
    algo = make()
    batch = rating_batch(n_tasks=3)
    preds = algo.adapt_trace(batch, 3)
    assert len(preds) == 4 and all(torch.equal(p, preds[0]) for p in preds)
    assert len(algo.adapt_trace(batch, 5, at=[5])) == 1
    other = make()
    with torch.no_grad():
        for p in other.net.parameters():
            p.add_(0.1)
    other.load_state_dict(algo.state_dict())
    assert torch.equal(other.adapt_trace(batch, 0)[0], preds[0])


def test_a_step_moves_the_net_and_leaves_the_melu_head_alone():
    algo = make(dtype=torch.float32)
    head = {n: p.clone() for n, p in algo.model.head.named_parameters()}
    before = [p.clone() for p in algo.net.parameters()]
    algo.step(rating_batch(n_tasks=4, dtype=torch.float32))
    assert all(torch.equal(p, head[n]) for n, p in algo.model.head.named_parameters())  # the MeLU head is unused
    assert any(not torch.equal(a, b) for a, b in zip(before, algo.net.parameters()))


def test_bad_settings_and_models_are_refused():
    cfg = OmegaConf.structured(TaNPConfig)
    with pytest.raises(ValueError, match="algo=tanp reads MeLU's field embeddings: it needs model=melu"):
        TaNP(cfg, MLP({"in_dim": 1}, [8]), "regression")
    with pytest.raises(UserError, match="algo.modulation='films' is not one of film, gating"):  # its rule, beside the field
        check_nodes(algo=OmegaConf.merge(cfg, {"modulation": "films"}))
    assert ALGOS["tanp"] is TaNP


def test_eval_md_shows_one_forward_pass_not_steps():
    state = {"n_tasks": 3, "headline_step": "0", "adaptation": "one forward pass over the support set, no gradient steps",
             "steps": {"0": {"mae": 0.8, "mae_ci": 0.1}}, "per_task": {"0": {"mae": [0.7, 0.8, 0.9]}},
             "floors": {"user_bias": {"mae": 0.85, "mae_ci": 0.1}},
             "floors_per_task": {"user_bias": {"mae": [0.8, 0.85, 0.9]}}}
    text = format_table({"states": {"user_cold": state}})
    assert "after one forward pass" in text and "| support set, one pass |" in text
    assert "steps |" not in text and "after 0 steps" not in text


@needs_ml100k()
@pytest.mark.slow
def test_tanp_trains_and_evaluates_through_the_console_script(tmp_path, cache_env):
    run = tmp_path / "run"
    train_ml100k(run, "experiment=melu_ml100k_tanp", env=cache_env)
    result = read_json(run / "eval.json")["states"]
    cold = result["user_cold"]
    assert list(cold["steps"]) == ["0"] and cold["adaptation"].startswith("one forward pass")
    # Golden numbers of this fixed-seed run (one thread, CPU; recorded 2026-12-07 with torch 2.13.0): another CPU's
    # kernels move them by far less than the tolerance, a change to the model or the algorithm by more.
    assert cold["steps"]["0"]["mae"] == pytest.approx(0.849093, abs=1e-3) and "mf_foldin" in cold["floors"]
    assert cold["steps"]["0"]["mae"] < cold["floors"]["global_mean"]["mae"] - 0.03  # it reads the user's ratings
    md = (run / "eval.md").read_text()
    assert "after one forward pass" in md and "| 1 steps |" not in md
    r = run_cli("eval", f"checkpoint={run / 'checkpoints' / 'best.pt'}", f"hydra.run.dir={tmp_path / 'eval'}",
                "device.threads=1", env=cache_env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_json(tmp_path / "eval" / "eval.json")["states"] == result


def test_bench_reference_step_runs_the_per_task_loop(monkeypatch):
    from metarec.bench.rows import reference_step
    algo = make(dtype=torch.float32)
    calls = []
    loop = algo.reference_loss
    monkeypatch.setattr(algo, "reference_loss", lambda batch: calls.append(batch) or loop(batch))
    before = [p.clone() for p in algo.net.parameters()]
    step, why = reference_step(algo)
    assert why == ""
    step(rating_batch(n_tasks=3, dtype=torch.float32))
    assert len(calls) == 1 and any(not torch.equal(a, b) for a, b in zip(before, algo.net.parameters()))


def test_bench_refuses_an_algorithm_outside_its_grid(capsys):
    from metarec.bench.speed import main
    assert main(["--algos", "tanpp"]) == 2
    err = capsys.readouterr().err
    assert "--algos tanpp: the algorithms are maml, " in err and ", tanp" in err
