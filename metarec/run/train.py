"""Meta-training: compose, seed, build, loop, validate, checkpoint, evaluate the best checkpoint.

    metarec train algo=maml data=movielens trainer.max_steps=1000
    metarec train algo=maml data=movielens trainer.max_steps=1000 hydra.run.dir=RUN trainer.resume=auto  # continue RUN

The run folder's records are metarec/run/run_folder.py's, resuming metarec/run/resume.py's, signals
metarec/signals.py's; data sets, models and algorithms come from their registries.
"""
from __future__ import annotations

import logging
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import metarec
from metarec.run import checkpoint, distributed, loggers
from metarec import progress as progress_lines
from metarec.algos import ALGOS
from metarec.algos.base import MetaLearner
from metarec.data import build_source
from metarec.run.device import setup_device
from metarec.errors import UserError, first_line
from metarec.evaluation.evaluate import evaluate_all, format_table
from metarec.config.fit import check_config
from metarec.models import MODELS
from metarec.run.resume import Progress, overrides, resume, stopped, take_over
from metarec.run.run_folder import BareFolder, RunFolder, run_info
from metarec.signals import Interrupted, SignalCatcher
from metarec.tasks import TaskSource

log = logging.getLogger("metarec")
VAL_METRIC = {"rating": "mae", "regression": "mse", "classification": "acc"}


def build(cfg: DictConfig, device: torch.device, progress: bool = True):
    """The task source, the model and the algorithm a config describes (seeded); the config is
    checked (ranges, and a model, data set and algorithm that fit) before any data is read."""
    check_config(cfg)
    source = build_source(cfg.data, device, cfg.seed, progress)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.algo, source.model_spec()).to(device)
    with settings_errors():
        algo = ALGOS[cfg.algo.name](cfg.algo, model, source.kind, compile=cfg.trainer.compile, fast_paths=cfg.trainer.fast_paths)
    algo.attach(source)  # an algorithm that reads the source itself (item tasks: metaemb) keeps it
    if cfg.trainer.select_state is not None:
        algo.select_state = cfg.trainer.select_state  # e.g. val_item_cold (data.val_items) for a method on item_cold
    return source, model, algo


def build_model(model_cfg, algo_cfg, spec: dict) -> torch.nn.Module:
    """The model `model=...` names, with what the algorithm asks of it (e.g. prompt vectors)."""
    if model_cfg.name not in MODELS:
        raise UserError(f"model={model_cfg.name!r} is not one of {', '.join(MODELS)}")
    if algo_cfg.name not in ALGOS:
        raise UserError(f"algo={algo_cfg.name!r} is not one of {', '.join(ALGOS)}")
    with settings_errors():
        return MODELS[model_cfg.name].from_config(spec, model_cfg, **ALGOS[algo_cfg.name].model_options(algo_cfg))


@contextmanager
def settings_errors():
    """Models and algorithms refuse settings they cannot use with a ValueError that says which and
    what to do (their constructors know no CLI): here, where a config builds them, it becomes the
    one-line UserError the CLI prints, for the model as for the algorithm."""
    try:
        yield
    except ValueError as e:
        raise UserError(first_line(e, limit=None)) from None


def train(cfg: DictConfig, run_dir: Path) -> float:
    """Meta-train, keep the best validation checkpoint, evaluate it; returns the validation metric.

    trainer.resume=auto continues this run folder's last.pt exactly (model, optimizer, algorithm
    state, RNG states, the sampler's position); SIGINT / SIGTERM finish the current step, write
    last.pt and exit 130 / 143; a NaN loss stops the run before anything is saved.
    """
    signals = SignalCatcher()  # until the loop starts (and after it ends) a signal stops at once
    progress = Progress()
    run, rank = None, 0
    # where no safe point comes within signals.GRACE_S, the watchdog records the stop as the run would
    signals.deadline = lambda signum, phase: stopped(Interrupted(signum, phase), run, run_dir, progress.step)
    try:
        device = setup_device(cfg.device)
        rank, world = distributed.setup(device)  # torchrun: this process's rank and the number of ranks; else 0, 1
        run_dir = distributed.rank_dir(run_dir, rank, world)  # rank 0 writes the run folder, other ranks a scratch one
        progress_lines.show(cfg.trainer.progress and rank == 0)  # decoding, factor fits, evaluation, floors
        run = RunFolder(run_dir, "tensorboard" in loggers.requested(cfg))
        signals.beat = run.beat  # the heartbeat between evaluation chunks
        return _train(cfg, run, device, (rank, world), progress, signals)
    except Interrupted as e:
        raise SystemExit(stopped(e, run, run_dir, progress.step)) from None
    except BaseException as e:
        (run or BareFolder(run_dir)).record_failure(progress.step, first_line(e, limit=None))
        raise
    finally:
        signals.restore()
        if run is not None:
            run.release()
            if run.lock is not None and rank == 0:  # a run this process ran (not a refusal), rank 0's folder
                loggers.publish(cfg, run.path)


def _train(cfg: DictConfig, run: RunFolder, device: torch.device, ranks: tuple[int, int], progress: Progress,
           signals: SignalCatcher) -> float:
    start = take_over(cfg, run)
    source, model, algo = build(cfg, device, cfg.trainer.progress and ranks[0] == 0)
    algo.sync = distributed.make_sync(ranks[1])  # averages the meta-gradients over ranks (None for one process)
    generator = torch.Generator().manual_seed(cfg.seed)  # the episode sampler's only source of randomness
    if start is not None:
        resume(cfg, start, run, source.fingerprint(), model, algo, generator, progress)
    elif cfg.trainer.resume == "auto":
        log.info("trainer.resume=auto: %s has no last.pt yet, starting at step 0", run.path / "checkpoints")
    info = run_info(cfg, device, source, start, progress.step)
    run.write_json("run_info.json", info)
    run.status("running", progress.step)
    Trainer(cfg, run, device, ranks, source, algo, generator, progress, signals).loop()
    signals.phase = "final"
    result = _evaluate_best(cfg, run, source, algo, progress)
    run.write_json("run_info.json", {**info, "train_time_s": progress.train_time_s})
    run.status("finished", progress.step)
    for s, r in result["states"].items():
        log.info("%s: %s", s, {k: round(v, 4) for k, v in r["steps"][r["headline_step"]].items() if not k.endswith("_ci")})
    return float(progress.best) if progress.best is not None else float("nan")


@dataclass
class Trainer:
    """The meta-training loop: steps, logging, validation with model selection, checkpoints, stops."""

    cfg: DictConfig
    run: RunFolder
    device: torch.device
    ranks: tuple[int, int]  # (this process's rank, the number of ranks)
    source: TaskSource
    algo: MetaLearner
    generator: torch.Generator
    progress: Progress
    signals: SignalCatcher

    def loop(self) -> None:
        trainer, p = self.cfg.trainer, self.progress
        stop = trainer.patience is not None and p.stale >= trainer.patience
        if stop:
            log.info("this run stopped early at step %d (%d validations without improvement)", p.step, p.stale)
        bar = tqdm(total=trainer.max_steps, initial=p.step, disable=not trainer.progress or self.ranks[0] > 0,
                   dynamic_ncols=True, desc="meta-train")
        self.signals.phase = "train"  # from here a signal lets the current step finish
        t_window, n_window = time.perf_counter(), 0
        while not stop and p.step < trainer.max_steps:
            loss, n_tasks = self.step()
            n_window += n_tasks
            bar.update(1)
            if p.step % trainer.log_every == 0 or p.step == trainer.max_steps:
                rate = n_window / max(time.perf_counter() - t_window, 1e-9)
                bar.set_postfix(loss=f"{loss:.4f}", tasks_s=f"{rate:.0f}")
                self.run.metrics({"step": p.step, "split": "train", "loss": loss, "tasks_per_s": rate})
                t_window, n_window = time.perf_counter(), 0
            if p.step % trainer.val_every == 0 or p.step == trainer.max_steps:
                stop = self.validate()
            if distributed.mean(float(self.signals.caught is not None), self.ranks[1]) > 0:  # all ranks stop together
                if self.run.saved.get("last.pt") != p.step:
                    self.run.checkpoint("last.pt", self.snapshot())
                bar.close()
                raise Interrupted(self.signals.caught or signal.SIGTERM, "train")
        bar.close()

    def step(self) -> tuple[float, int]:
        """One meta-update on a fresh meta-batch: (its loss over all ranks, the tasks it held)."""
        t0 = time.perf_counter()
        rank, world = self.ranks
        batch = self.source.sample_train(self.cfg.trainer.meta_batch_size, self.generator)
        stats = self.algo.step(distributed.shard(batch, rank, world))  # every rank drew the same global batch
        loss = distributed.mean(stats["loss"], world)
        if not math.isfinite(loss):
            raise _diverged("the loss", loss, self.progress.step + 1, self.run)
        self.progress.step += 1
        self.progress.train_time_s += time.perf_counter() - t0
        return loss, batch.n_tasks

    def validate(self) -> bool:
        """Score the validation tasks, keep best.pt and last.pt; True when trainer.patience says stop."""
        p, metric = self.progress, VAL_METRIC[self.source.kind]
        self.signals.phase = "validation"  # a stop takes effect at its next chunk, or the watchdog's (signals.py)
        val = evaluate_all(self.cfg, self.source, self.algo, "val", select=True)  # fixed tasks: draws nothing
        self.signals.phase = "train"
        state = self.algo.select_state  # metaemb: val_new
        if state not in val["states"]:
            raise UserError(f"there are no {state} tasks to select the best checkpoint with: give validation users "
                            "a share (data.split), held-out new items a share (data.val_items, for val_item_cold), "
                            "or loosen the data filter")
        row = val["states"][state]["steps"][val["states"][state]["headline_step"]]
        self.run.metrics({"step": p.step, "split": "val", **{k: v for k, v in row.items() if not k.endswith("_ci")}})
        value = row[metric]
        improved = p.best is None or (value > p.best if metric == "acc" else value < p.best)
        if not self.algo.selectable():
            pass  # a two-phase learner's base phase: neither a best checkpoint nor a stale validation
        elif math.isfinite(value) and improved:
            p.best, p.best_step, p.stale = value, p.step, 0
            self.run.checkpoint("best.pt", self.snapshot())
        else:
            p.stale += 1
        self.run.checkpoint("last.pt", self.snapshot())
        log.info("step %d val %s %.4f (best %.4f at %d)", p.step, metric, value, p.best, p.best_step)
        if self.cfg.trainer.patience is not None and p.stale >= self.cfg.trainer.patience:
            log.info("early stop: %d validations without improvement", p.stale)
            return True
        return False

    def snapshot(self) -> dict:
        """A checkpoint of this moment: weights, algorithm and RNG states, progress, config, data fingerprint."""
        if not all(bool(torch.isfinite(w).all()) for w in self.algo.meta_parameters()):
            raise _diverged("the weights", "nan or inf", self.progress.step, self.run)  # never save NaNs over a good file
        rng = {"sampler": self.generator.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"model": self.algo.model.state_dict(), "algo": self.algo.state_dict(), "step": self.progress.step,
                "rng": rng, "trainer": self.progress.state_dict(), "config": OmegaConf.to_container(self.cfg, resolve=True),
                "metarec": metarec.__version__, "fingerprint": self.source.fingerprint(),
                "model_spec": self.source.model_spec(), "overrides": overrides()}


def _evaluate_best(cfg: DictConfig, run: RunFolder, source: TaskSource, algo: MetaLearner, progress: Progress) -> dict:
    """The test evaluation of the best validation checkpoint: eval.json and eval.md."""
    best = run.path / "checkpoints" / "best.pt"
    if best.exists():
        ck = checkpoint.load(best)
        algo.model.load_state_dict(ck["model"])
        algo.load_state_dict(ck["algo"])
    result = {**evaluate_all(cfg, source, algo, "test"), "checkpoint": str(best), "best_step": progress.best_step}
    run.write_json("eval.json", result)
    run.write_text("eval.md", format_table(result, f"{cfg.algo.name} on {cfg.data.name}"))
    return result


def _diverged(what: str, value, step: int, run: RunFolder) -> UserError:
    last = run.saved.get("last.pt")
    path = run.path / "checkpoints" / "last.pt"
    if last is None:
        return UserError(f"{what} became {value} at step {step}: training stopped (no checkpoint was written yet): "
                         f"lower algo.meta_lr or algo.inner_lr and start again")
    return UserError(f"{what} became {value} at step {step}: training stopped without saving; the last good "
                     f"checkpoint is {path} (step {last}): lower algo.meta_lr or algo.inner_lr and continue from "
                     f"it with trainer.resume={path}")
