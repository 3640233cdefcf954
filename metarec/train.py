"""Meta-training: compose, seed, build, loop, validate, checkpoint, evaluate the best checkpoint.

    metarec train algo=maml data=movielens trainer.max_steps=1000
    metarec train algo=maml data=movielens trainer.max_steps=1000 hydra.run.dir=RUN trainer.resume=auto  # continue RUN
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import shlex
import signal
import sys
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


def setup_device(device_cfg) -> torch.device:
    """The torch device `device=...` names, with its thread count and determinism applied."""
    if device_cfg.threads:
        torch.set_num_threads(device_cfg.threads)
    if device_cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS' own condition, read when it starts
        torch.use_deterministic_algorithms(True)
    return resolve_device(device_cfg.name)


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
    from metarec.models import MODELS
    if model_cfg.name not in MODELS:
        raise UserError(f"model={model_cfg.name!r} is not one of {', '.join(MODELS)}")
    options = ALGOS[algo_cfg.name].model_options(algo_cfg) if algo_cfg.name in ALGOS else {}
    return MODELS[model_cfg.name].from_config(spec, model_cfg, **options)


def build(cfg: DictConfig, device: torch.device, progress: bool = True):
    """The task source, the model and the algorithm a config describes (seeded)."""
    source = build_source(cfg.data, device, cfg.seed, progress)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.algo, source.model_spec()).to(device)
    if cfg.algo.name not in ALGOS:
        raise UserError(f"algo={cfg.algo.name!r} is not one of {', '.join(ALGOS)}")
    try:
        algo = ALGOS[cfg.algo.name](cfg.algo, model, source.kind, compile=cfg.trainer.compile, fast_paths=cfg.trainer.fast_paths)
    except ValueError as e:
        raise UserError(str(e)) from None
    return source, model, algo


def eval_steps(cfg) -> int:
    return cfg.algo.eval_steps if cfg.algo.eval_steps is not None else cfg.algo.inner_steps


def evaluate_all(cfg, source, algo, split: str, select: bool = False) -> dict:
    """eval.json's content: every state of `split` ("test" or "val"), floors beside the learned model.
    select=True (the trainer's model selection): the "val" state alone, at the headline step alone."""
    headline = eval_steps(cfg)
    steps = headline if select else max(cfg.eval.max_steps, headline)
    states = {}
    for state, batch in source.eval_tasks(split).items():
        if select and state != "val":
            continue
        floors = source.floors(state) if not select and hasattr(source, "floors") else None
        # validation selects on the headline step alone: no query forward for the steps before it
        r = evaluate_state(algo, batch, source.kind, steps, cfg.eval.ndcg_gain, cfg.eval.chunk, cfg.seed, floors,
                           only_last=select)
        r["headline_step"] = str(headline)
        states[state] = r
    result = {"states": states}
    if source.kind == "rating":
        result["gain"] = ("ndcg@k: 2^r-1, ndcg_lin@k: linear (r)" if cfg.eval.ndcg_gain == "exp"
                          else "ndcg@k: linear (r), ndcg_exp@k: 2^r-1")
    return result


def headline(result: dict, state: str, metric: str) -> float:
    r = result["states"][state]
    return r["steps"][r["headline_step"]][metric]


class RunFolder:
    """Writes metrics.jsonl, status.json, run_info.json, eval.json/md and checkpoints/ under the Hydra
    run dir (and the same scalars as TensorBoard events under tensorboard/ with trainer.tensorboard=true).
    A full disk or an unwritable folder ends the run with one line, never with a half-written file."""

    def __init__(self, path: Path, tensorboard: bool = False):
        self.path = path
        _writing(path, lambda: self.path.mkdir(parents=True, exist_ok=True))
        self.had_status = (path / "status.json").exists()  # a previous run's record, kept unless we run
        self.running = False
        self.saved: dict[str, int] = {}  # checkpoint name -> the step this process last wrote to it
        self.tensorboard = _tensorboard_writer(path / "tensorboard") if tensorboard else None

    def write_json(self, name: str, obj: dict) -> None:
        self.write_text(name, json.dumps(obj, indent=2) + "\n")

    def write_text(self, name: str, text: str) -> None:
        tmp = self.path / f".{name}.tmp"

        def write() -> None:
            tmp.write_text(text)
            tmp.replace(self.path / name)
        _writing(self.path / name, write, cleanup=tmp)

    def status(self, status: str, step: int, reason: str | None = None) -> None:
        self.write_json("status.json", {"status": status, "reason": reason, "step": step})
        self.running = status == "running"

    def record_failure(self, step: int, reason: str) -> None:
        """status.json says failed, unless the folder holds another run's record that this run never
        took over (e.g. a refusal to overwrite it); never hides the original error."""
        if self.running or not self.had_status:
            try:
                self.status("failed", step, reason)
            except Exception:  # noqa: BLE001 - a full disk: the console line is what matters
                pass

    def metrics(self, row: dict) -> None:
        def append() -> None:
            with open(self.path / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        _writing(self.path / "metrics.jsonl", append)
        if self.tensorboard is not None:
            for key, value in row.items():
                if key not in ("step", "split") and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{row['split']}/{key}", value, row["step"])
            self.tensorboard.flush()  # live curves; no close() needed at exit

    def keep_metrics(self, step: int, source: Path | None = None) -> None:
        """After a resume from `step`: keep the rows up to it (from `source`, another run's
        metrics.jsonl, if given); the resumed run writes the later ones again."""
        source = source or self.path / "metrics.jsonl"
        rows = []
        if source.is_file():
            for line in source.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                if isinstance(row, dict) and row.get("step", 0) <= step:
                    rows.append(line + "\n")
        self.write_text("metrics.jsonl", "".join(rows))

    def checkpoint(self, name: str, obj: dict) -> Path:
        path = self.path / "checkpoints" / name
        checkpoint.save(obj, path)
        self.saved[name] = obj["step"]
        return path


class Interrupted(Exception):
    """SIGINT / SIGTERM: `phase` says where the run stopped (start, train, second, final)."""

    def __init__(self, signum: int, phase: str):
        self.signum, self.phase = signum, phase


def train(cfg: DictConfig, run_dir: Path) -> float:
    """Meta-train, keep the best validation checkpoint, evaluate it; returns the validation metric.

    trainer.resume=auto continues this run folder's last.pt exactly (model, optimizer, algorithm
    state, RNG states, the sampler's position); SIGINT / SIGTERM finish the current step, write
    last.pt and exit 130 / 143; a NaN loss stops the run before anything is saved.
    """
    signals = _SignalCatcher()  # until the loop starts (and after it ends) a signal stops at once
    state = {"step": 0, "best": None, "best_step": None, "stale": 0, "train_time_s": 0.0}
    run = None
    try:
        device = setup_device(cfg.device)
        rank, world = distributed.setup(device)  # torchrun: this process's rank and the number of ranks; else 0, 1
        run_dir = distributed.rank_dir(run_dir, rank, world)  # rank 0 writes the run folder, other ranks a scratch one
        run = RunFolder(run_dir, cfg.trainer.tensorboard)
        return _train(cfg, run, device, rank, world, state, signals)
    except Interrupted as e:
        raise SystemExit(_stopped(e, run, run_dir, state)) from None
    except BaseException as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        (run or _BareFolder(run_dir)).record_failure(state["step"], reason)
        raise
    finally:
        signals.restore()


def _train(cfg: DictConfig, run: RunFolder, device: torch.device, rank: int, world: int, state: dict,
           signals: "_SignalCatcher") -> float:
    ckpt_dir = run.path / "checkpoints"
    checkpoint.remove_stale_temps(ckpt_dir)  # a killed writer's leftovers
    resume = _resume_path(cfg, ckpt_dir)
    if resume is None and (ckpt_dir / "last.pt").exists():
        _keep_record(run.path, checkpoint.load(ckpt_dir / "last.pt"))
        raise UserError(f"{run.path} already holds a run (checkpoints/last.pt): continue it with trainer.resume=auto, "
                        f"or choose a new hydra.run.dir to start over")
    if resume is None:
        run.status("running", 0)  # a resumed run takes the folder over only once its checkpoint is accepted
    source, model, algo = build(cfg, device, cfg.trainer.progress and rank == 0)
    algo.sync = distributed.make_sync(world)  # averages the meta-gradients over ranks (None for one process)
    metric = VAL_METRIC[source.kind]
    better = (lambda a, b: a > b) if metric == "acc" else (lambda a, b: a < b)
    generator = torch.Generator().manual_seed(cfg.seed)  # the episode sampler's only source of randomness
    fingerprint = _fingerprint(source)
    if resume is not None:
        _resume(cfg, resume, run, fingerprint, model, algo, generator, state)
    elif cfg.trainer.resume == "auto":
        log.info("trainer.resume=auto: %s has no last.pt yet, starting at step 0", ckpt_dir)
    info = {"metarec": metarec.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "data_fingerprint": fingerprint,
            "data_files": [str(p) for p in getattr(source, "source_files", [])], "seed": cfg.seed,
            "resumed_from": None if resume is None else {"checkpoint": str(resume), "step": state["step"]}}
    run.write_json("run_info.json", info)
    run.status("running", state["step"])

    def snapshot() -> dict:
        if not all(bool(torch.isfinite(p).all()) for p in algo.meta_parameters()):
            raise _diverged("the weights", "nan or inf", state["step"], run)  # never save NaNs over a good file
        rng = {"sampler": generator.get_state(), "torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"model": model.state_dict(), "algo": algo.state_dict(), "step": state["step"], "rng": rng,
                "trainer": dict(state), "config": OmegaConf.to_container(cfg, resolve=True),
                "metarec": metarec.__version__, "fingerprint": fingerprint, "model_spec": source.model_spec(),
                "overrides": _overrides()}

    patience = cfg.trainer.patience
    stopped_early = patience is not None and state["stale"] >= patience
    if stopped_early:
        log.info("this run stopped early at step %d (%d validations without improvement)", state["step"], state["stale"])
    bar = tqdm(total=cfg.trainer.max_steps, initial=state["step"], disable=not cfg.trainer.progress or rank > 0,
               dynamic_ncols=True, desc="meta-train")
    signals.phase = "train"  # from here a signal lets the current step finish
    t_window, n_window = time.perf_counter(), 0
    while not stopped_early and state["step"] < cfg.trainer.max_steps:
        t0 = time.perf_counter()
        batch = source.sample_train(cfg.trainer.meta_batch_size, generator)
        stats = algo.step(distributed.shard(batch, rank, world))  # every rank drew the same global batch
        stats["loss"] = distributed.mean(stats["loss"], world)
        if not math.isfinite(stats["loss"]):
            raise _diverged("the loss", stats["loss"], state["step"] + 1, run)
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
            val = evaluate_all(cfg, source, algo, "val", select=True)  # fixed tasks: draws nothing from `generator`
            if "val" not in val["states"]:
                raise UserError("there are no validation tasks to select the best checkpoint with: "
                                "give validation users a share (data.split) or loosen the data filter")
            row = val["states"]["val"]["steps"][val["states"]["val"]["headline_step"]]
            run.metrics({"step": step, "split": "val", **{k: v for k, v in row.items() if not k.endswith("_ci")}})
            if math.isfinite(row[metric]) and (state["best"] is None or better(row[metric], state["best"])):
                state.update(best=row[metric], best_step=step, stale=0)
                run.checkpoint("best.pt", snapshot())
            else:
                state["stale"] += 1
            run.checkpoint("last.pt", snapshot())
            log.info("step %d val %s %.4f (best %.4f at %d)", step, metric, row[metric], state["best"], state["best_step"])
            if patience is not None and state["stale"] >= patience:
                log.info("early stop: %d validations without improvement", state["stale"])
                stopped_early = True
        if distributed.mean(float(signals.caught is not None), world) > 0:  # every rank stops at the same step
            if run.saved.get("last.pt") != step:
                run.checkpoint("last.pt", snapshot())
            bar.close()
            raise Interrupted(signals.caught or signal.SIGTERM, "train")
    signals.phase = "final"
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
    run.write_text("eval.md", format_table(result, f"{cfg.algo.name} on {cfg.data.name}"))
    info["train_time_s"] = state["train_time_s"]
    run.write_json("run_info.json", info)
    run.status("finished", state["step"])
    for s in result["states"]:
        log.info("%s: %s", s, {k: round(v, 4) for k, v in result["states"][s]["steps"][result["states"][s]["headline_step"]].items() if not k.endswith("_ci")})
    return float(state["best"]) if state["best"] is not None else float("nan")


# Settings a resumed run may change: how long it runs, how it reports, where it runs and the data's
# location (the fingerprint checks the data itself). Anything else would silently mix two experiments.
RESUME_MAY_CHANGE = ("trainer.max_steps", "trainer.resume", "trainer.progress", "trainer.log_every",
                     "trainer.tensorboard", "trainer.val_every", "trainer.patience", "eval.", "device.",
                     "data.root", "data.cache_dir", "checkpoint")


def _resume_path(cfg, ckpt_dir: Path) -> Path | None:
    """trainer.resume: null (start), auto (this run folder's last.pt, if any), or a checkpoint / run folder."""
    resume = cfg.trainer.resume
    if resume is None:
        return None
    if resume == "auto":
        last = ckpt_dir / "last.pt"
        return last if last.exists() else None
    path = Path(resume).expanduser()
    for candidate in (path, path / "checkpoints" / "last.pt", path / "last.pt"):
        if candidate.is_file():
            return candidate
    raise UserError(f"trainer.resume={resume}: no such checkpoint; use trainer.resume=auto (this run folder's "
                    f"last.pt) or the path of a checkpoints/last.pt")


def _resume(cfg, path: Path, run: RunFolder, fingerprint: str, model, algo, generator: torch.Generator,
            state: dict) -> None:
    """Load everything a checkpoint holds so that the run continues as if it had never stopped."""
    ck = checkpoint.load(path)
    own = path.parent.resolve() == (run.path / "checkpoints").resolve()
    if ck.get("fingerprint") != fingerprint:
        if own:
            _keep_record(run.path, ck)
        raise UserError(f"checkpoint {path} was trained on other data (its data fingerprint differs from this "
                        f"data's): resume it with the data it was trained on")
    written = checkpoint.config(ck, path)  # checked against the schema: keys it predates hold their defaults
    changes = _config_changes(written, cfg)
    if changes and cfg.trainer.resume == "auto":
        _keep_record(run.path, ck)
        again = ["metarec train", *map(shlex.quote, ck.get("overrides", [])), shlex.quote(f"hydra.run.dir={run.path}"),
                 "trainer.resume=auto"]
        raise UserError(f"trainer.resume=auto continues {run.path} with its own config, but {', '.join(changes)}: "
                        f"resume with the run's own overrides ({' '.join(again)}), or start from the checkpoint "
                        f"with another config by naming it: trainer.resume={path}")
    if changes:
        log.warning("starting from %s with a changed config (%s): not an exact continuation", path, ", ".join(changes))
    if any(written.device[k] != cfg.device[k] for k in ("name", "threads", "deterministic")):
        log.warning("resuming on another device, thread count or device.deterministic than %s was written with: "
                    "the run continues, but not bit for bit", path)
    try:
        model.load_state_dict(ck["model"])
        algo.load_state_dict(ck["algo"])
        generator.set_state(ck["rng"]["sampler"])
        torch.set_rng_state(ck["rng"]["torch"])
        if "cuda" in ck["rng"] and torch.cuda.is_available() and len(ck["rng"]["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
        state.update(ck["trainer"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        text = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} does not fit the model and algorithm this config builds ({text}): "
                        f"resume with the overrides it was trained with") from None
    if own:
        run.saved[path.name] = state["step"]
    elif state["best_step"] is not None:  # a new run folder: bring the best checkpoint along
        other = path.parent / "best.pt"
        best = checkpoint.load(other) if other.is_file() else None
        if best is not None and best.get("step") == state["best_step"]:
            run.checkpoint("best.pt", best)
        else:
            log.warning("%s has no best.pt of step %s: the best checkpoint is chosen among this run's validations",
                        path.parent, state["best_step"])
            state.update(best=None, best_step=None, stale=0)
    run.keep_metrics(state["step"], None if own else path.parent.parent / "metrics.jsonl")
    log.info("resumed from %s at step %d", path, state["step"])


def _config_changes(old: DictConfig, new: DictConfig) -> list[str]:
    """'key old -> new' for each setting that differs and that a resumed run may not change."""
    a = _flat(OmegaConf.to_container(old, resolve=True))
    b = _flat(OmegaConf.to_container(new, resolve=True))
    return [f"{k} {a[k]} -> {b[k]}" for k in sorted(a.keys() & b.keys())
            if a[k] != b[k] and not k.startswith(RESUME_MAY_CHANGE)]


def _flat(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def _diverged(what: str, value, step: int, run: RunFolder) -> UserError:
    last = run.saved.get("last.pt")
    path = run.path / "checkpoints" / "last.pt"
    if last is None:
        return UserError(f"{what} became {value} at step {step}: training stopped (no checkpoint was written yet): "
                         f"lower algo.meta_lr or algo.inner_lr and start again")
    return UserError(f"{what} became {value} at step {step}: training stopped without saving; the last good "
                     f"checkpoint is {path} (step {last}): lower algo.meta_lr or algo.inner_lr and continue from "
                     f"it with trainer.resume={path}")


def _stopped(e: Interrupted, run: RunFolder | None, run_dir: Path, state: dict) -> int:
    """The one line an interrupted run prints, its status.json, and its exit code (128 + signal)."""
    name = signal.Signals(e.signum).name
    last = run.saved.get("last.pt") if run is not None else None
    path = (run.path if run is not None else run_dir) / "checkpoints" / "last.pt"
    if last is None and path.exists():
        last = "?"  # resumed from it, then stopped before writing a new one
        try:
            last = checkpoint.load(path)["step"]
        except UserError:
            pass
    what = {"start": "stopped before training started",
            "train": f"stopped after step {state['step']}",
            "second": f"stopped at once during step {state['step'] + 1}",
            "final": "stopped during the final evaluation (training is complete)"}[e.phase]
    if path.exists():
        line = f"{what}; {path} holds step {last}; resume with: {_resume_command(run_dir)}"
    else:
        line = f"{what}; nothing was saved: run the same command again to start over"
    if run is not None:
        try:
            run.status("interrupted", state["step"], f"{name}: {what}" + ("; resume with trainer.resume=auto" if path.exists() else ""))
        except Exception:  # noqa: BLE001 - a full disk: the console line is what matters
            pass
    print(f"metarec: {name}: {line}", file=sys.stderr, flush=True)
    return 128 + e.signum


def _resume_command(run_dir: Path) -> str:
    """This run's command line with trainer.resume=auto."""
    return " ".join(["metarec train", *map(shlex.quote, _overrides()), shlex.quote(f"hydra.run.dir={run_dir}"),
                     "trainer.resume=auto"])


def _overrides() -> list[str]:
    """The command-line overrides as Hydra recorded them, less trainer.resume ([] outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        if HydraConfig.initialized():
            return [o for o in HydraConfig.get().overrides.task if not o.startswith("trainer.resume=")]
    except Exception:  # noqa: BLE001 - called outside Hydra (tests, a library user)
        pass
    return []


def _keep_record(run_path: Path, ck: dict) -> None:
    """Hydra rewrote .hydra/ for a command that was then refused: put back the config and overrides of
    the run that the folder holds (from its checkpoint), so that report and resume read the real run."""
    hydra_dir = run_path / ".hydra"
    if not hydra_dir.is_dir() or "overrides" not in ck:
        return
    try:
        OmegaConf.save(OmegaConf.create(ck["config"]), hydra_dir / "config.yaml")
        OmegaConf.save(OmegaConf.create(list(ck["overrides"])), hydra_dir / "overrides.yaml")
    except OSError:
        pass


class _BareFolder:
    """The failure record of a run that failed before its RunFolder existed (e.g. device=cuda on a CPU)."""

    def __init__(self, path: Path):
        self.path = path

    def record_failure(self, step: int, reason: str) -> None:
        status = self.path / "status.json"
        if self.path.is_dir() and not status.exists():
            try:
                status.write_text(json.dumps({"status": "failed", "reason": reason, "step": step}, indent=2) + "\n")
            except OSError:
                pass


def _writing(path: Path, write, cleanup: Path | None = None) -> None:
    """Run `write`; a full disk or an unwritable folder becomes one clear line."""
    try:
        write()
    except OSError as e:
        if cleanup is not None:
            try:
                cleanup.unlink(missing_ok=True)
            except OSError:
                pass
        raise UserError(f"could not write {path} ({e.strerror or e}): free disk space or choose a writable "
                        f"hydra.run.dir; a stopped run continues with trainer.resume=auto") from None


class _SignalCatcher:
    """SIGINT / SIGTERM: in the training loop (phase "train") the first one sets a flag, and the loop
    finishes its step, saves last.pt and stops; a second one, or one outside the loop, stops at once."""

    def __init__(self):
        self.caught: int | None = None
        self.phase = "start"
        self._old = {}
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (a launcher's worker): leave signals alone
                pass

    def _handle(self, signum, _frame):
        if self.phase != "train":
            raise Interrupted(signum, self.phase)
        if self.caught is not None:
            raise Interrupted(signum, "second")
        self.caught = signum

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


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
