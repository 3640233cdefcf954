"""Resuming a run: which checkpoint trainer.resume names, what a resumed run may change, and loading
everything a checkpoint holds so that the run continues as if it had never stopped."""
from __future__ import annotations

import logging
import shlex
import signal
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from metarec.errors import UserError, first_line
from metarec.run import checkpoint
from metarec.run.run_folder import RunFolder
from metarec.run.run_lock import occupied
from metarec.signals import Interrupted, claim_stop, exit_now

log = logging.getLogger("metarec")

# Settings a resumed run may change: how long it runs, how it reports, where it runs and the data's
# location (the fingerprint checks the data itself). Anything else would silently mix two experiments.
RESUME_MAY_CHANGE = ("trainer.max_steps", "trainer.resume", "trainer.progress", "trainer.log_every",
                     "trainer.tensorboard", "trainer.loggers", "trainer.tracking_", "trainer.val_every", "trainer.patience", "eval.", "device.",
                     "data.root", "data.cache_dir", "checkpoint")


@dataclass
class Progress:
    """Where training stands: saved in every checkpoint (as "trainer") and restored by a resume."""

    step: int = 0
    best: float | None = None  # the best validation metric so far, at best_step
    best_step: int | None = None
    stale: int = 0  # validations since the best one (trainer.patience)
    train_time_s: float = 0.0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for f in fields(self):
            if f.name in state:
                setattr(self, f.name, state[f.name])


def resume_path(cfg, ckpt_dir: Path) -> Path | None:
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


def take_over(cfg: DictConfig, run: RunFolder) -> Path | None:
    """The checkpoint to resume from, if any; a folder that holds another run is refused, not overwritten."""
    ckpt_dir = run.path / "checkpoints"
    start = resume_path(cfg, ckpt_dir)
    if start is None and (ckpt_dir / "last.pt").exists():
        raise refuse_occupied(run.path, ["checkpoints/last.pt"], "continue it with trainer.resume=auto, "
                              "or choose a new hydra.run.dir to start over")
    run.take_lock("train")  # from here this process alone writes the folder
    checkpoint.remove_stale_temps(ckpt_dir)  # a killed writer's leftovers (never a live writer's)
    if start is None:
        run.status("running", 0)  # a resumed run takes the folder over only once its checkpoint is accepted
    return start


def resume(cfg, path: Path, run: RunFolder, fingerprint: str, model, algo, generator: torch.Generator,
           progress: Progress) -> None:
    """Load everything the checkpoint at `path` holds into the model, the algorithm, the RNGs and `progress`."""
    ck = checkpoint.load(path)
    own = path.parent.resolve() == (run.path / "checkpoints").resolve()
    if ck.get("fingerprint") != fingerprint:
        if own:
            keep_record(run.path, ck)
        raise UserError(f"checkpoint {path} was trained on other data (its data fingerprint differs from this "
                        f"data's): resume it with the data it was trained on")
    _check_config(cfg, ck, path, run)
    try:
        model.load_state_dict(ck["model"])
    except (KeyError, RuntimeError) as e:
        changed = config_changes(checkpoint.config(ck, path), cfg)
        why = checkpoint.mismatch(ck["model"], model) if isinstance(ck.get("model"), dict) else first_line(e)
        raise UserError(f"checkpoint {path} does not fit the model this config builds: {why}"
                        + (f" (the config differs: {', '.join(changed)})" if changed else "")
                        + ": resume with the overrides it was trained with") from None
    try:
        algo.load_state_dict(ck["algo"])
        generator.set_state(ck["rng"]["sampler"])
        torch.set_rng_state(ck["rng"]["torch"])
        if "cuda" in ck["rng"] and torch.cuda.is_available() and len(ck["rng"]["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
        progress.load_state_dict(ck["trainer"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise UserError(f"checkpoint {path} does not fit the model and algorithm this config builds ({first_line(e)}): "
                        f"resume with the overrides it was trained with") from None
    if own:
        run.saved[path.name] = progress.step
    elif progress.best_step is not None:
        _bring_best(path, run, progress)
    run.keep_metrics(progress.step, None if own else path.parent.parent / "metrics.jsonl")
    log.info("resumed from %s at step %d", path, progress.step)


def _check_config(cfg, ck: dict, path: Path, run: RunFolder) -> None:
    """trainer.resume=auto refuses a changed config; a named checkpoint warns; other devices warn."""
    written = checkpoint.config(ck, path)  # checked against the schema: keys it predates hold their defaults
    changes = config_changes(written, cfg)
    if changes and cfg.trainer.resume == "auto":
        keep_record(run.path, ck)
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


def _bring_best(path: Path, run: RunFolder, progress: Progress) -> None:
    """A new run folder started from another run's checkpoint: bring that run's best checkpoint along."""
    other = path.parent / "best.pt"
    best = checkpoint.load(other) if other.is_file() else None
    if best is not None and best.get("step") == progress.best_step:
        run.checkpoint("best.pt", best)
    else:
        log.warning("%s has no best.pt of step %s: the best checkpoint is chosen among this run's validations",
                    path.parent, progress.best_step)
        progress.best, progress.best_step, progress.stale = None, None, 0


def config_changes(old: DictConfig, new: DictConfig) -> list[str]:
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


def refuse_occupied(run_path: Path, found: list[str], advice: str) -> UserError:
    """The refusal of a command into a folder that holds another run's records (train without
    trainer.resume, eval): its .hydra/ record is put back first (keep_record) when it has a last.pt."""
    last = run_path / "checkpoints" / "last.pt"
    if last.is_file():
        keep_record(run_path, checkpoint.load(last))
    return occupied(run_path, found, advice)


def keep_record(run_path: Path, ck: dict) -> None:
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


def resume_command(run_dir: Path) -> str:
    """This run's command line with trainer.resume=auto."""
    return " ".join(["metarec train", *map(shlex.quote, overrides()), shlex.quote(f"hydra.run.dir={run_dir}"),
                     "trainer.resume=auto"])


def overrides() -> list[str]:
    """The command-line overrides as Hydra recorded them, less trainer.resume ([] outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        if HydraConfig.initialized():
            return [o for o in HydraConfig.get().overrides.task if not o.startswith("trainer.resume=")]
    except Exception:  # noqa: BLE001 - called outside Hydra (tests, a library user)
        pass
    return []


def stopped(e: Interrupted, run: RunFolder | None, run_dir: Path, step: int) -> int:
    """The one line an interrupted run prints, its status.json, and its exit code (128 + signal)."""
    claim_stop()
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
            "train": f"stopped after step {step}",
            "second": f"stopped at once during step {step + 1}",
            "validation": f"stopped during the validation after step {step}",
            "eval": "stopped during the evaluation, before writing it",
            "final": "stopped during the final evaluation (training is complete)"}[e.phase]
    if path.exists():
        line = f"{what}; {path} holds step {last}; resume with: {resume_command(run_dir)}"
    else:
        line = f"{what}; nothing was saved: run the same command again to start over"
    if run is not None:
        try:
            run.status("interrupted", step, f"{name}: {what}" + ("; resume with trainer.resume=auto" if path.exists() else ""))
        except Exception:  # noqa: BLE001 - a full disk: the console line is what matters
            pass
    print(f"metarec: {name}: {line}", file=sys.stderr, flush=True)
    exit_now(128 + e.signum)
    return 128 + e.signum
