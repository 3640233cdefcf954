"""Data-parallel meta-training: 2 ranks (gloo, CPU) take the same steps as one process with the
whole meta-batch; torchrun runs the real command and only rank 0 writes the run folder."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import read_json
from omegaconf import OmegaConf

from metarec.run import distributed
from metarec.errors import UserError
from metarec.tasks import TaskBatch

TORCHRUN = Path(sys.executable).parent / "torchrun"
STEPS, META_BATCH = 5, 8
# Second-order MAML, Meta-SGD (its learned inner rates are meta-parameters too) and Reptile. Reptile
# steps plain SGD here: its meta-gradient theta - mean theta'_i cancels to a few float32 ulps on
# some weights, whose sign then differs with the summation order, and Adam turns a sign into a
# full lr-sized step; SGD keeps the comparison at rounding level.
VARIANTS = {
    "maml": ["algo=maml"],
    "meta_sgd": ["algo=maml", "algo.learn_inner_lr=true", "algo.inner_steps=2"],
    "reptile": ["algo=reptile", "algo.inner_steps=3", "algo.outer=interpolate", "algo.meta_lr=0.5"],
}


def _batch(n: int) -> TaskBatch:
    x = torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, 3, 1)
    return TaskBatch(x, x[..., 0], torch.ones(n, 3), x, x[..., 0], torch.ones(n, 3))


def test_shard_takes_equal_contiguous_slices():
    batch = _batch(8)
    parts = [distributed.shard(batch, r, 4) for r in range(4)]
    assert [p.n_tasks for p in parts] == [2, 2, 2, 2]
    assert torch.equal(torch.cat([p.support_x for p in parts]), batch.support_x)
    assert distributed.shard(batch, 0, 1) is batch


def test_uneven_meta_batch_is_a_clear_error():
    with pytest.raises(UserError, match="meta_batch_size=6 does not split evenly over 4 ranks"):
        distributed.shard(_batch(6), 0, 4)


def test_one_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.setup() == (0, 1)
    assert distributed.make_sync(1) is None and distributed.mean(2.5, 1) == 2.5
    assert distributed.rank_dir(Path("x"), 0, 1) == Path("x") and not dist.is_initialized()


def _config(algo: list[str]) -> dict:
    from hydra import compose, initialize_config_module

    from metarec.config.schema import register
    register()
    with initialize_config_module("metarec.conf", version_base="1.3"):
        cfg = compose("config", overrides=["data=sinusoid", "device=cpu", f"trainer.meta_batch_size={META_BATCH}",
                                           "trainer.compile=false", *algo])
    return OmegaConf.to_container(cfg)


def _meta_train(cfg: dict, rank: int, world: int) -> tuple[dict, list[float]]:
    """The trainer's loop, reduced to what this test is about: draw, shard, step with the sync hook."""
    from metarec.run.train import build
    cfg = OmegaConf.create(cfg)
    source, model, algo = build(cfg, torch.device("cpu"), progress=False)
    algo.sync = distributed.make_sync(world)
    generator = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _ in range(STEPS):
        batch = source.sample_train(cfg.trainer.meta_batch_size, generator)
        losses.append(distributed.mean(algo.step(distributed.shard(batch, rank, world))["loss"], world))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    params.update({f"inner_lr.{n}": p.detach().clone() for n, p in (algo.inner_lrs or {}).items()})
    return params, losses


def _rank_main(rank: int, world: int, store: str, configs: dict, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save({name: _meta_train(cfg, rank, world) for name, cfg in configs.items()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_the_global_meta_batch(tmp_path):
    configs = {name: _config(algo) for name, algo in VARIANTS.items()}
    mp.spawn(_rank_main, args=(2, str(tmp_path / "store"), configs, str(tmp_path)), nprocs=2, join=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: the same summation order inside each task's loss
    try:
        _compare_with_one_process(configs, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _compare_with_one_process(configs: dict, tmp_path: Path) -> None:
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, cfg in configs.items():
        single, single_losses = _meta_train(cfg, 0, 1)
        for params, losses in (r[name] for r in ranks):
            assert params.keys() == single.keys()
            for n, p in params.items():
                assert torch.allclose(p, single[n], rtol=0, atol=1e-6), (name, n, (p - single[n]).abs().max())
            assert losses == pytest.approx(single_losses, rel=1e-6)  # float32 losses of ~10: relative
        moved = max((single[n] - p0).abs().max() for n, p0 in _initial(cfg).items())
        assert moved > 1e-3, f"{name}: {STEPS} steps hardly changed the weights; the comparison would be empty"


def _initial(cfg: dict) -> dict:
    from metarec.run.train import build
    _, model, _ = build(OmegaConf.create(cfg), torch.device("cpu"), progress=False)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


QUICK = ["data=sinusoid", "device=cpu", "device.threads=1", "trainer.val_every=3", "trainer.log_every=2",
         f"trainer.meta_batch_size={META_BATCH}", "trainer.progress=false"]


def _torchrun(*args, tmp_path: Path) -> subprocess.CompletedProcess:
    """The documented command: torchrun --standalone --nproc_per_node=2 -m metarec.cli train ..."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch)}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "metarec.cli", "train", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    """One process, the whole meta-batch, 6 steps: the reference."""
    from conftest import run_cli
    run = tmp_path_factory.mktemp("single") / "run"
    r = run_cli("train", *QUICK, "trainer.max_steps=6", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def _assert_same_weights(run: Path, reference: Path) -> None:
    a = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for n, p in b["model"].items():
        assert torch.allclose(a["model"][n], p, rtol=0, atol=1e-6), (n, (a["model"][n] - p).abs().max())


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process_and_only_rank0_writes(tmp_path, single_run):
    run = tmp_path / "ddp"
    r = _torchrun(*QUICK, "trainer.max_steps=6", f"hydra.run.dir={run}", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_weights(run, single_run)
    # rank 0 alone wrote: one metrics row per logged step, each log line once, no rank scratch left
    assert len((run / "metrics.jsonl").read_text().splitlines()) == \
        len((single_run / "metrics.jsonl").read_text().splitlines())
    log = (run / "train.log").read_text()
    assert log.count("step 3 val") == 1 and "data-parallel: 2 ranks, backend gloo" in log
    assert read_json(run / "status.json")["status"] == "finished"
    assert read_json(run / "eval.json")["states"].keys() == read_json(single_run / "eval.json")["states"].keys()
    assert not [p for p in (tmp_path / "scratch").iterdir() if p.name.startswith("metarec-rank")]


@pytest.mark.slow
def test_torchrun_resume_continues_every_rank_from_last_pt(tmp_path, single_run):
    run = tmp_path / "ddp"
    r = _torchrun(*QUICK, "trainer.max_steps=3", f"hydra.run.dir={run}", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _torchrun(*QUICK, "trainer.max_steps=6", "trainer.resume=auto", f"hydra.run.dir={run}", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_weights(run, single_run)


@pytest.mark.slow
def test_torchrun_ranks_with_different_run_dirs_fail_with_one_clear_line(tmp_path):
    r = _torchrun(*QUICK, "hydra.run.dir=" + str(tmp_path) + "/r${oc.env:RANK}", tmp_path=tmp_path)
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("metarec: error")]
    assert errors and all("pass the same hydra.run.dir" in e for e in errors)
