"""Meta-training: compose, seed, build, loop, validate, checkpoint, evaluate the best checkpoint.

    metarec train algo=maml data=movielens trainer.max_steps=1000
"""
from __future__ import annotations

import json
import logging
import math
import platform
import signal
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import metarec
from metarec import checkpoint, distributed
from metarec.algos import ALGOS
from metarec.errors import UserError
from metarec.evaluate import evaluate_state, format_table

log = logging.getLogger("metarec")
VAL_METRIC = {"rating": "mae", "regression": "mse", "classification": "acc"}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda, but this torch sees no CUDA GPU (torch.cuda.is_available() is False): "
                        "use device=cpu or device=auto")
    if name not in ("cpu", "cuda"):
        raise UserError(f"device={name!r} is not one of cpu, cuda, auto")
    return torch.device(name)


def build_source(data_cfg, device: torch.device, seed: int, progress: bool = True):
    name = data_cfg.name
    if name == "movielens":
        from metarec.data.movielens import MovieLensTasks
        return MovieLensTasks(data_cfg, device, seed, progress=progress)
    if name == "sinusoid":
        from metarec.data.sinusoid import SinusoidTasks
        return SinusoidTasks(data_cfg, device)
    if name == "omniglot":
        from metarec.data.omniglot import OmniglotTasks
        return OmniglotTasks(data_cfg, device)
    raise UserError(f"data={name!r} is not one of movielens, sinusoid, omniglot")


def build_model(model_cfg, algo_cfg, spec: dict) -> torch.nn.Module:
    prompt = dict(prompt_len=algo_cfg.prompt_len, prompt_dim=algo_cfg.prompt_dim)
    if model_cfg.name == "melu":
        from metarec.models.melu import MeLU
        return MeLU(spec, model_cfg.embedding_dim, list(model_cfg.hidden), **prompt)
    if model_cfg.name == "mlp":
        from metarec.models.mlp import MLP
        return MLP(spec, hidden=tuple(model_cfg.hidden), **prompt)
    if model_cfg.name == "conv4":
        from metarec.models.conv4 import Conv4
        return Conv4(spec, channels=model_cfg.channels)
    raise UserError(f"model={model_cfg.name!r} is not one of melu, mlp, conv4")


def build(cfg: DictConfig, device: torch.device, progress: bool = True):
    """The task source, the model and the algorithm a config describes (seeded)."""
    source = build_source(cfg.data, device, cfg.seed, progress)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.algo, source.model_spec()).to(device)
    if cfg.algo.name not in ALGOS:
        raise UserError(f"algo={cfg.algo.name!r} is not one of {', '.join(ALGOS)}")
    try:
        algo = ALGOS[cfg.algo.name](cfg.algo, model, source.kind, compile=cfg.trainer.compile)
    except ValueError as e:
        raise UserError(str(e)) from None
    return source, model, algo


def eval_steps(cfg) -> int:
    return cfg.algo.eval_steps if cfg.algo.eval_steps is not None else cfg.algo.inner_steps


def evaluate_all(cfg, source, algo, split: str) -> dict:
    """eval.json's content: every state of `split`, floors beside the learned model."""
    headline = eval_steps(cfg)
    steps = max(cfg.eval.max_steps, headline) if split == "test" else headline
    states = {}
    for state, batch in source.eval_tasks(split).items():
        floors = source.floors(state) if split == "test" and hasattr(source, "floors") else None
        r = evaluate_state(algo, batch, source.kind, steps, cfg.eval.ndcg_gain, cfg.eval.chunk, cfg.seed, floors)
        r["headline_step"] = str(headline)
        states[state] = r
    result = {"states": states}
    if source.kind == "rating":
        result["gain"] = "2^r-1" if cfg.eval.ndcg_gain == "exp" else "linear (r)"
    return result


def headline(result: dict, state: str, metric: str) -> float:
    r = result["states"][state]
    return r["steps"][r["headline_step"]][metric]


class RunFolder:
    """Writes metrics.jsonl, status.json, run_info.json, eval.json/md under the Hydra run dir
    (and the same scalars as TensorBoard events under tensorboard/ with trainer.tensorboard=true)."""

    def __init__(self, path: Path, tensorboard: bool = False):
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)
        self.tensorboard = _tensorboard_writer(path / "tensorboard") if tensorboard else None

    def write_json(self, name: str, obj: dict) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        tmp.replace(self.path / name)

    def status(self, status: str, step: int, reason: str | None = None) -> None:
        self.write_json("status.json", {"status": status, "reason": reason, "step": step})

    def metrics(self, row: dict) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tensorboard is not None:
            for key, value in row.items():
                if key not in ("step", "split") and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{row['split']}/{key}", value, row["step"])
            self.tensorboard.flush()  # live curves; no close() needed at exit


class Interrupted(Exception):
    def __init__(self, signum: int):
        self.signum = signum


def train(cfg: DictConfig, run_dir: Path) -> float:
    """Meta-train, keep the best validation checkpoint, evaluate it; returns the validation metric."""
    if cfg.device.threads:
        torch.set_num_threads(cfg.device.threads)
    device = resolve_device(cfg.device.name)
    rank, world = distributed.setup(device)  # torchrun: this process's rank and the number of ranks; else 0, 1
    run_dir = distributed.rank_dir(run_dir, rank, world)  # rank 0 writes the run folder, other ranks a scratch one
    run = RunFolder(run_dir, cfg.trainer.tensorboard)
    source, model, algo = build(cfg, device, cfg.trainer.progress and rank == 0)
    algo.sync = distributed.make_sync(world)  # averages the meta-gradients over ranks (None for one process)
    ckpt_dir = run_dir / "checkpoints"
    metric = VAL_METRIC[source.kind]
    better = (lambda a, b: a > b) if metric == "acc" else (lambda a, b: a < b)
    generator = torch.Generator().manual_seed(cfg.seed)
    state = {"step": 0, "best": None, "best_step": None, "stale": 0, "train_time_s": 0.0}
    resume = _resume_path(cfg, ckpt_dir)
    if resume is not None:
        ck = checkpoint.load(resume)
        if ck.get("fingerprint") != _fingerprint(source):
            raise UserError(f"checkpoint {resume} was trained on other data (fingerprint differs): "
                            f"resume it with the data it was trained on")
        model.load_state_dict(ck["model"])
        algo.load_state_dict(ck["algo"])
        generator.set_state(ck["rng"]["sampler"])
        torch.set_rng_state(ck["rng"]["torch"])
        state.update(ck["trainer"])
        log.info("resumed from %s at step %d", resume, state["step"])
    info = {"metarec": metarec.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "data_fingerprint": _fingerprint(source),
            "data_files": [str(p) for p in getattr(source, "source_files", [])], "seed": cfg.seed}
    run.write_json("run_info.json", info)
    run.status("running", state["step"])

    def snapshot() -> dict:
        return {"model": model.state_dict(), "algo": algo.state_dict(), "step": state["step"],
                "rng": {"sampler": generator.get_state(), "torch": torch.get_rng_state()},
                "trainer": dict(state), "config": OmegaConf.to_container(cfg, resolve=True),
                "metarec": metarec.__version__, "fingerprint": _fingerprint(source),
                "model_spec": source.model_spec()}

    signals = _catch_signals()
    bar = tqdm(total=cfg.trainer.max_steps, initial=state["step"], disable=not cfg.trainer.progress or rank > 0,
               dynamic_ncols=True, desc="meta-train")
    try:
        t_window, n_window = time.perf_counter(), 0
        while state["step"] < cfg.trainer.max_steps:
            t0 = time.perf_counter()
            batch = source.sample_train(cfg.trainer.meta_batch_size, generator)
            stats = algo.step(distributed.shard(batch, rank, world))  # every rank drew the same global batch
            stats["loss"] = distributed.mean(stats["loss"], world)
            if not math.isfinite(stats["loss"]):
                last = ckpt_dir / "last.pt"
                raise UserError(f"loss became {stats['loss']} at step {state['step'] + 1}: stopped; the last good "
                                f"checkpoint is {last if last.exists() else 'none (nothing was saved yet)'}; "
                                f"lower algo.inner_lr / algo.meta_lr")
            state["step"] += 1
            state["train_time_s"] += time.perf_counter() - t0
            n_window += batch.n_tasks
            bar.update(1)
            step = state["step"]
            if step % cfg.trainer.log_every == 0 or step == cfg.trainer.max_steps:
                rate = n_window / max(time.perf_counter() - t_window, 1e-9)
                bar.set_postfix(loss=f"{stats['loss']:.4f}", tasks_s=f"{rate:.0f}")
                run.metrics({"step": step, "split": "train", "loss": stats["loss"], "tasks_per_s": rate})
                t_window, n_window = time.perf_counter(), 0
            if step % cfg.trainer.val_every == 0 or step == cfg.trainer.max_steps:
                val = evaluate_all(cfg, source, algo, "val")
                row = val["states"]["val"]["steps"][val["states"]["val"]["headline_step"]]
                run.metrics({"step": step, "split": "val", **{k: v for k, v in row.items() if not k.endswith("_ci")}})
                if state["best"] is None or better(row[metric], state["best"]):
                    state.update(best=row[metric], best_step=step, stale=0)
                    checkpoint.save(snapshot(), ckpt_dir / "best.pt")
                else:
                    state["stale"] += 1
                checkpoint.save(snapshot(), ckpt_dir / "last.pt")
                log.info("step %d val %s %.4f (best %.4f at %d)", step, metric, row[metric], state["best"], state["best_step"])
                if cfg.trainer.patience is not None and state["stale"] >= cfg.trainer.patience:
                    log.info("early stop: %d validations without improvement", state["stale"])
                    break
            if signals.caught is not None:
                raise Interrupted(signals.caught)
    except Interrupted as e:
        bar.close()
        checkpoint.save(snapshot(), ckpt_dir / "last.pt")
        name = signal.Signals(e.signum).name
        run.status("interrupted", state["step"], f"{name} at step {state['step']}")
        print(f"metarec: {name} received: stopped after step {state['step']}, saved {ckpt_dir / 'last.pt'}; "
              f"resume with: metarec train hydra.run.dir={run_dir} trainer.resume=auto (and the same overrides)")
        raise SystemExit(128 + e.signum)
    except BaseException as e:
        bar.close()
        run.status("failed", state["step"], str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise
    finally:
        signals.restore()
    bar.close()
    best = ckpt_dir / "best.pt"
    if best.exists():
        ck = checkpoint.load(best)
        model.load_state_dict(ck["model"])
        algo.load_state_dict(ck["algo"])
    result = evaluate_all(cfg, source, algo, "test")
    result["checkpoint"] = str(best)
    result["best_step"] = state["best_step"]
    run.write_json("eval.json", result)
    (run_dir / "eval.md").write_text(format_table(result, f"{cfg.algo.name} on {cfg.data.name}"))
    info["train_time_s"] = state["train_time_s"]
    run.write_json("run_info.json", info)
    run.status("finished", state["step"])
    for s in result["states"]:
        log.info("%s: %s", s, {k: round(v, 4) for k, v in result["states"][s]["steps"][result["states"][s]["headline_step"]].items() if not k.endswith("_ci")})
    return float(state["best"]) if state["best"] is not None else float("nan")


def _resume_path(cfg, ckpt_dir: Path) -> Path | None:
    resume = cfg.trainer.resume
    if resume is None:
        return None
    if resume == "auto":
        last = ckpt_dir / "last.pt"
        return last if last.exists() else None
    return Path(resume)


class _SignalCatcher:
    """SIGINT / SIGTERM set a flag; the loop finishes its step, saves last.pt and exits 130 / 143."""

    def __init__(self):
        self.caught: int | None = None
        self._old = {}
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (a launcher's worker): leave signals alone
                pass

    def _handle(self, signum, _frame):
        if self.caught is not None:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.caught = signum

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _catch_signals() -> _SignalCatcher:
    return _SignalCatcher()


def _tensorboard_writer(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
    except ImportError:
        raise UserError("trainer.tensorboard=true needs the tensorboard package: pip install 'metarec[tensorboard]' "
                        "(or pip install tensorboard), or leave trainer.tensorboard=false") from None
    return SummaryWriter(log_dir=str(path))


def _fingerprint(source) -> str:
    """SHA-256 of the source files (MovieLens, Omniglot); generated data sets name their generator."""
    return getattr(source, "fingerprint", None) or f"generated:{type(source).__name__}"
