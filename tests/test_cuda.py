"""On a CUDA GPU: the engine's meta-gradients equal the per-task loop there and the CPU's, a run trains on
the GPU and its checkpoint evaluates on the CPU, and a resumed GPU run equals an uninterrupted one.
Skipped where torch sees no GPU (CI); run on a GPU machine with `pytest tests/test_cuda.py`."""
import signal

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("torch sees no CUDA GPU", allow_module_level=True)

from conftest import ML100K, needs_ml100k, pause_env, read_json, run_cli, wait_paused  # noqa: E402
from fixtures import rating_batch  # noqa: E402
from test_engine import SPEED_OPTIONS, grads_of, make, reptile_case, with_option  # noqa: E402
from test_resume import assert_same_run, start  # noqa: E402
from test_ridge import make as make_ridge  # noqa: E402

from metarec.algos import ALGOS  # noqa: E402
from metarec.bench.reference import per_task_meta_loss, per_task_reptile_step  # noqa: E402

GPU = torch.device("cuda")


def assert_close(got, want, names, atol=1e-10):
    for name, a, b in zip(names, got, want):
        a = torch.zeros(()) if a is None else a.cpu()
        b = torch.zeros(()) if b is None else b.cpu()
        assert torch.allclose(a, b, atol=atol, rtol=0), name


MAML_CASES = ([(option, "mlp") for option in SPEED_OPTIONS]
              + [("fast: Gram first layer, written second order", "all"), ("core only", "all")])


@pytest.mark.parametrize("option, inner_params", MAML_CASES)
@pytest.mark.parametrize("first_order", [False, True])
def test_maml_meta_gradient_on_the_gpu_equals_the_loop_and_the_cpu(option, inner_params, first_order):
    """Every engine path (the fast path: Gram / explicit / one group per length, the hand fields for
    inner_params=all, the written-out second order; the core path alone), float64, 3 inner steps, ragged tasks."""
    batch = rating_batch(n_tasks=6, support=(1, 9))
    model, algo = make(inner_params, first_order, 3)
    cpu = grads_of(with_option(algo, SPEED_OPTIONS[option]).meta_loss(batch), list(model.parameters()))
    model, algo = make(inner_params, first_order, 3)
    model.to(GPU)
    algo = with_option(type(algo)(algo.cfg, model, "rating"), SPEED_OPTIONS[option])
    params, names = list(model.parameters()), [n for n, _ in model.named_parameters()]
    gpu_batch = batch.to(GPU)
    got = grads_of(algo.meta_loss(gpu_batch), params)
    want = grads_of(per_task_meta_loss(model, algo.engine.inner_names, gpu_batch, "rating", 0.3, 3, first_order), params)
    assert all(g is None or g.is_cuda for g in got)
    assert_close(got, want, names)
    assert_close(got, cpu, names)


def test_ridge_meta_gradient_on_the_gpu_equals_the_cpu():
    batch = rating_batch(n_tasks=5, support=(2, 9), query=(1, 5))
    grads = []
    for device in ("cpu", GPU):
        model, algo = make_ridge()
        model.to(device)
        algo = ALGOS["ridge"](algo.cfg, model, "rating")
        params = algo.meta_parameters()
        grads.append(torch.autograd.grad(algo.meta_loss(batch.to(device)), params))
    assert_close(grads[1], grads[0], range(len(grads[0])))


@pytest.mark.parametrize("case", ["melu all", "sinusoid mlp", "conv4"])
def test_reptile_on_the_gpu_equals_the_loop(case):
    """Off the CPU, conv4 runs its tasks through vmap, not the CPU's per-task loop."""
    algo, reference, batch, kind = reptile_case(case, GPU, inner_optimizer="sgd")
    assert not algo.engine.task_loop
    algo.optimizer.step = lambda: None  # compare the gradients the update is made of
    algo.step(batch)
    per_task_reptile_step(reference, algo.engine.inner_names, batch, kind, 0.3, 3)
    assert_close([p.grad for p in algo.model.parameters()], [q.grad for q in reference.parameters()],
                 [n for n, _ in algo.model.named_parameters()], atol=1e-9)


@needs_ml100k()
def test_a_gpu_run_trains_and_its_checkpoint_evaluates_on_the_cpu(tmp_path):
    run = tmp_path / "run"
    r = run_cli("train", "experiment=melu_ml100k", f"data.root={ML100K}", "device=cuda", "trainer.max_steps=60",
                "trainer.val_every=30", "trainer.progress=false", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    info = read_json(run / "run_info.json")
    assert info["device"].startswith("cuda") and info["device_name"] == torch.cuda.get_device_name(0)
    ck = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert all(t.is_cuda for t in ck["model"].values()) and "cuda" in ck["rng"]
    on_gpu = read_json(run / "eval.json")["states"]
    r = run_cli("eval", f"checkpoint={run}/checkpoints/best.pt", "device=cpu", f"hydra.run.dir={tmp_path}/eval")
    assert r.returncode == 0, r.stderr[-3000:]
    on_cpu = read_json(tmp_path / "eval" / "eval.json")["states"]
    assert on_cpu.keys() == on_gpu.keys() == {"warm", "user_cold", "item_cold", "user_item_cold"}
    for state in on_gpu:  # float32 on two devices: the same tasks and weights, sums in another order
        for step, row in on_gpu[state]["steps"].items():
            assert abs(row["mae"] - on_cpu[state]["steps"][step]["mae"]) < 1e-4, (state, step)


RESUME_RUNS = {  # overrides besides device=cuda and device.deterministic=true
    "sinusoid": ["data=sinusoid", "data.n_val_tasks=20", "data.n_test_tasks=50"],
    "movielens": ["experiment=melu_ml100k", f"data.root={ML100K}"],
}


@pytest.mark.parametrize("data", list(RESUME_RUNS))
def test_a_resumed_deterministic_gpu_run_equals_the_straight_run(tmp_path, data):
    """device.deterministic=true (no atomic sums in a free order): a run stopped by SIGTERM and resumed
    ends bit for bit where an uninterrupted one does."""
    if data == "movielens" and not (ML100K / "u.data").exists():
        pytest.skip("../shared/data/ml-100k is absent")
    steps = 400
    base = [*RESUME_RUNS[data], "device=cuda", "device.deterministic=true", "trainer.meta_batch_size=4",
            "trainer.val_every=100", "trainer.log_every=5", "trainer.progress=false", f"trainer.max_steps={steps}"]
    straight = tmp_path / "straight"
    r = run_cli("train", *base, f"hydra.run.dir={straight}")
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    proc = start(run, base=base[:-1], steps=steps, env=pause_env(tmp_path))
    wait_paused(proc)  # it stopped itself after step 100's last.pt: the signal lands mid-run, however fast the GPU
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert 100 <= torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] <= 101
    r = run_cli("train", *base, f"hydra.run.dir={run}", "trainer.resume=auto")
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_run(straight, run)
