"""`metarec eval checkpoint=PATH`: rebuild data and model from the checkpoint's own config, then
evaluate; command-line overrides change the evaluation only (algo.inner_steps=5, data.shots=5).
eval.split=val scores validation users instead of test ones (MovieLens: val and val_new, the
validation users' new items), for choices that must not look at a test user.

The keys that decide which users and items land in which state (the protocol: the data's keys and,
where the split follows the run's seed, the seed) come from the checkpoint: another value would
redraw the split and score the checkpoint's own training users as test users, so it is refused
unless eval.allow_protocol_change=true, and then eval.md and eval.json say so at the top. The
evaluation writes into a folder of its own (never one that holds a run's records), locked as a
training run's is; SIGINT / SIGTERM stop it between chunks of tasks, before anything is written.
"""
from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from metarec.run import checkpoint
from metarec import progress
from metarec.run.device import setup_device
from metarec.errors import UserError, first_line
from metarec.evaluation.evaluate import evaluate_all, format_table
from metarec.run.resume import refuse_occupied
from metarec.run.run_folder import RunFolder
from metarec.run.run_lock import EVAL_ADVICE, records
from metarec.signals import Interrupted, SignalCatcher, claim_stop, exit_now
from metarec.run.train import build

log = logging.getLogger("metarec")

# data.* keys an evaluation may change: they pick how many / which fixed tasks are drawn, how many
# support ratings a task keeps, where the files are, or the floors' settings; never who is a test user.
EVAL_MAY_CHANGE = ("data.shots", "data.root", "data.cache_dir", "data.n_test_tasks", "data.n_val_tasks",
                   "data.eval_seed", "data.mf_rank", "data.mf_reg", "data.mf_foldin_reg", "data.mf_transductive_reg")


def protocol_key(cfg: DictConfig, key: str) -> bool:
    """True when `key` decides the checkpoint's split: every data.* key but EVAL_MAY_CHANGE's, and the
    seed where the data's split follows it (data.split_seed null)."""
    if key == "seed":
        return "split_seed" in cfg.data and cfg.data.split_seed is None
    return key.startswith("data.") and key not in EVAL_MAY_CHANGE


def evaluate_checkpoint(cli_cfg: DictConfig, overrides: list[str], run_dir: Path) -> dict:
    path = cli_cfg.checkpoint or cli_cfg.eval.checkpoint
    if not path:
        raise UserError("metarec eval needs a checkpoint: metarec eval checkpoint=outputs/DATE/TIME/checkpoints/best.pt")
    run = RunFolder(run_dir)
    run.take_lock("eval")  # until this process ends: a live run's folder is refused
    if records(run_dir):  # Hydra's own .hydra/ is already there; another run's records are not ours to overwrite
        raise refuse_occupied(run_dir, records(run_dir), EVAL_ADVICE)
    ck = checkpoint.load(path)
    cfg = checkpoint.config(ck, Path(path))  # checked against this metarec's schemas
    changed = apply_overrides(cfg, cli_cfg, overrides)
    protocol = [f"{k} {old} -> {new}" for k, (old, new) in changed.items() if protocol_key(cfg, k)]
    if protocol and not cfg.eval.allow_protocol_change:
        key = next(k for k in changed if protocol_key(cfg, k))
        old, new = changed[key]
        raise UserError(f"{key}={new} differs from the checkpoint's {key}={old}, which decides the split it was "
                        f"trained on (who is a meta-train, validation or test user / item): "
                        f"evaluating with it would score training data as test data; drop the override, or add "
                        f"eval.allow_protocol_change=true to evaluate on another protocol (eval.md will say so)")
    cfg.trainer.progress = cli_cfg.trainer.progress
    progress.show(cfg.trainer.progress)
    signals = SignalCatcher()  # a signal stops at once while the data loads, between chunks once evaluating
    signals.beat = run.beat
    signals.deadline = lambda signum, _phase: _stopped(run, int(ck["step"]), path, signum)  # no safe point in time
    try:
        run.status("running", int(ck["step"]))
        result = _evaluate(cfg, ck, path, changed, protocol, signals)
    except Interrupted as e:
        claim_stop()
        raise SystemExit(_stopped(run, int(ck["step"]), path, e.signum)) from None
    except BaseException as e:
        run.record_failure(int(ck["step"]), first_line(e, limit=None))
        raise
    finally:
        signals.restore()
    table = format_table(result, f"{cfg.algo.name} on {cfg.data.name} ({cfg.eval.split}): {path}")
    if protocol:
        table = (f"**Protocol changed from the checkpoint's: {'; '.join(protocol)} "
                 f"(eval.allow_protocol_change=true). The test users and items may include the checkpoint's "
                 f"training data: not comparable with its own evaluation.**\n\n{table}")
    result["overrides"] = overrides
    run.write_json("eval.json", result)
    run.write_text("eval.md", table)
    run.status("finished", int(ck["step"]))
    print(table)
    return result


def _stopped(run: RunFolder, step: int, path, signum: int) -> int:
    """An evaluation stopped by a signal: its status.json and one line; returns the exit code."""
    name = signal.Signals(signum).name
    run.status("interrupted", step, f"{name}: stopped before the evaluation was written")
    print(f"metarec: {name}: stopped before the evaluation of {path} was written (nothing was): "
          f"run the same command again to evaluate it", file=sys.stderr, flush=True)
    exit_now(128 + signum)
    return 128 + signum


def apply_overrides(cfg: DictConfig, cli_cfg: DictConfig, overrides: list[str]) -> dict[str, tuple]:
    """Apply the command line's overrides to the checkpoint's config; returns {key: (old, new)} for
    each value that changed."""
    changed = {}
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key.startswith("hydra.") or key == "hydra":
            continue
        if key == "device":  # a group choice: take the composed device config
            cfg.device = cli_cfg.device
            continue
        if key in ("data", "model", "algo", "experiment"):
            raise UserError(f"metarec eval rebuilds {key} from the checkpoint's own config, so {o} cannot apply: "
                            f"change single keys instead (e.g. algo.inner_steps=5, data.shots=5)")
        old = OmegaConf.select(cfg, key, default=None)
        old = OmegaConf.to_container(old) if OmegaConf.is_config(old) else old
        try:
            OmegaConf.update(cfg, key, yaml.safe_load(value) if value else None, force_add=False)
        except Exception as e:  # noqa: BLE001 - a wrong type or unknown key, said in one line
            raise UserError(f"override {o} does not fit the checkpoint's config: {first_line(e)}") from None
        new = OmegaConf.select(cfg, key, default=None)
        new = OmegaConf.to_container(new) if OmegaConf.is_config(new) else new
        if new != old:
            changed[key] = (old, new)
    return changed


def _evaluate(cfg: DictConfig, ck: dict, path, changed: dict[str, tuple], protocol: list[str],
              signals: SignalCatcher) -> dict:
    device = setup_device(cfg.device)
    source, model, algo = build(cfg, device, progress=cfg.trainer.progress)
    if ck.get("fingerprint") != source.fingerprint():
        where = f"data.root={cfg.data.root}" if cfg.data.get("root") else f"the {cfg.data.name} data this config loads"
        raise UserError(f"checkpoint {path} was trained on other data than {where} (the data fingerprints differ): "
                        f"point data.root at the data it was trained on")
    try:
        model.load_state_dict(ck["model"])
    except (RuntimeError, KeyError) as e:
        why = checkpoint.mismatch(ck["model"], model) if isinstance(ck.get("model"), dict) else first_line(e)
        keys = [f"{k} {old} -> {new}" for k, (old, new) in changed.items() if k.startswith(("model.", "data.", "algo."))]
        raise UserError(f"checkpoint {path} does not fit the model its config describes: {why}"
                        + (f" (overridden: {', '.join(keys)}: leave those out)" if keys else "")) from None
    try:
        algo.load_state_dict(ck["algo"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise UserError(f"checkpoint {path} does not fit the algorithm its config describes ({first_line(e)})") from None
    signals.phase = "eval"  # from here a first signal takes effect at the next chunk of tasks
    result = evaluate_all(cfg, source, algo, cfg.eval.split)
    result["checkpoint"] = str(path)
    result["split"] = cfg.eval.split
    if protocol:
        result["protocol_changed"] = protocol  # the split differs from the checkpoint's: see eval.md's first line
    return result
