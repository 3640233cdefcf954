"""Experiment trackers (trainer.loggers): an ended run's folder sent to MLflow or Weights & Biases (TensorBoard
events are written live by metarec/run/run_folder.py); the run folder stays the record."""
from __future__ import annotations

import json
import logging
import math
import netrc
import os
import re
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from metarec.errors import first_line
from metarec.run.run_lock import read_record

log = logging.getLogger("metarec")
MLFLOW_STATUS = {"finished": "FINISHED", "interrupted": "KILLED"}  # anything else: FAILED
_MLFLOW_UNSAFE = re.compile(r"[^\w.\- /:]")  # what MLflow refuses in a metric or param name


def requested(cfg: DictConfig) -> list[str]:
    """trainer.loggers, with trainer.tensorboard=true (an alias of "tensorboard" in it) as tensorboard."""
    names = list(dict.fromkeys(cfg.trainer.get("loggers") or []))
    if cfg.trainer.get("tensorboard") and "tensorboard" not in names:
        names.append("tensorboard")
    return names


def publish(cfg: DictConfig, run_dir: Path) -> None:
    """Send the ended run's folder to each tracker of trainer.loggers; a failure is one warning line."""
    for name in requested(cfg):
        if name == "tensorboard":
            continue  # written while the run ran
        try:
            (_mlflow if name == "mlflow" else _wandb)(cfg, run_dir, RunRecord.read(cfg, run_dir))
        except Exception as e:  # noqa: BLE001 - a tracker's failure must never cost the run
            log.warning("trainer.loggers: %s could not log this run (%s); the run folder %s is the record",
                        name, first_line(e), run_dir)


class RunRecord:
    """What a tracker is sent, read from the run folder: params = the composed config flattened
    (algo.inner_lr, ...); metrics = every metrics.jsonl row as SPLIT/KEY at its training step, and
    eval.json's headline metrics and floors as test/STATE/KEY and test/STATE/floor/NAME/KEY at the best
    checkpoint's step; files = every file of the run folder (checkpoints included). MLflow names may not
    hold "@": ndcg@3 goes there as ndcg_at_3."""

    def __init__(self, cfg: DictConfig, run_dir: Path, job: dict, status: str, rows: list[dict], result: dict):
        self.cfg, self.path, self.job, self.status, self.rows, self.result = cfg, run_dir, job, status, rows, result

    @classmethod
    def read(cls, cfg: DictConfig, run_dir: Path) -> RunRecord:
        status = read_record(run_dir / "status.json").get("status", "failed")
        rows = []
        if (run_dir / "metrics.jsonl").is_file():
            for line in (run_dir / "metrics.jsonl").read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
        return cls(cfg, run_dir, hydra_job(cfg, run_dir), status, rows, read_record(run_dir / "eval.json"))

    def params(self) -> dict[str, str]:
        return flatten(OmegaConf.to_container(self.cfg, resolve=True))

    def metric_rows(self) -> list[tuple[int, dict[str, float]]]:
        """(step, {SPLIT/KEY: value}) per metrics.jsonl row."""
        out = []
        for row in self.rows:
            values = {f"{row.get('split', 'train')}/{k}": float(v) for k, v in row.items()
                      if k not in ("step", "split") and _number(v)}
            if values and isinstance(row.get("step"), int):
                out.append((row["step"], values))
        return out

    def test_metrics(self) -> tuple[int, dict[str, float]]:
        """eval.json's headline metrics and floors per state, at the step of the checkpoint it evaluated."""
        test = {}
        for state, doc in self.result.get("states", {}).items():
            head = doc.get("steps", {}).get(str(doc.get("headline_step")), {})
            test.update({f"test/{state}/{k}": float(v) for k, v in head.items() if _number(v)})
            for floor, values in doc.get("floors", {}).items():
                test.update({f"test/{state}/floor/{floor}/{k}": float(v) for k, v in values.items() if _number(v)})
        best = self.result.get("best_step")
        return (best if isinstance(best, int) else max([s for s, _ in self.metric_rows()], default=0)), test

    def files(self, skip: tuple[Path, ...] = ()) -> list[Path]:
        """Every file of the run folder but the trackers' own (RUN/wandb, a store inside it), links and locks."""
        skip = tuple(p.resolve() for p in skip)
        return sorted(p for p in self.path.rglob("*") if p.is_file() and not p.is_symlink()
                      and p.relative_to(self.path).parts[0] != "wandb" and not p.name.endswith(".lock")
                      and not any(p.parent.resolve().is_relative_to(s) for s in skip))


def hydra_job(cfg: DictConfig, run_dir: Path) -> dict:
    """The experiment and run names: a multirun is one experiment (its sweep folder) with a run per job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    overrides: list[str] = []
    experiment, name, multirun = cfg.trainer.get("tracking_experiment"), run_dir.name, False
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        overrides = list(hc.overrides.task)
        multirun = hc.mode == RunMode.MULTIRUN
        if multirun:
            experiment = experiment or str(hc.sweep.dir)
            name = f"{hc.job.num}: {' '.join(swept(overrides, Path(hc.sweep.dir) / 'multirun.yaml'))}".rstrip(": ")
    return {"experiment": experiment or "metarec", "name": name, "overrides": overrides, "multirun": multirun}


_SWEEP_SYNTAX = re.compile(r",|^\s*(range|choice|interval|glob|tag)\(")


def swept(overrides: list[str], multirun_yaml: Path) -> list[str]:
    """The job's overrides that the sweep varies: those given on the command line as a sweep (a,b or
    range(...)) and those a sweeper added (Optuna's params); all of them when multirun.yaml is unreadable."""
    import yaml
    try:
        given = yaml.safe_load(multirun_yaml.read_text())["hydra"]["overrides"]["task"]
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return overrides
    raw = dict(o.lstrip("+~").split("=", 1) for o in given if "=" in o)
    return [o for o in overrides
            if o.lstrip("+~").split("=", 1)[0] not in raw or _SWEEP_SYNTAX.search(raw[o.lstrip("+~").split("=", 1)[0]])]


def flatten(tree, prefix: str = "") -> dict[str, str]:
    """{"algo": {"inner_lr": 0.1}} -> {"algo.inner_lr": "0.1"}; a list is one value."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: str(tree)}
    out: dict[str, str] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def mlflow_name(name: str) -> str:
    return _MLFLOW_UNSAFE.sub("_", name.replace("@", "_at_"))


def tracking_uri(cfg: DictConfig) -> str:
    """trainer.tracking_uri, else $MLFLOW_TRACKING_URI, else a file store in outputs/mlruns here."""
    return cfg.trainer.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or \
        (Path.cwd() / "outputs" / "mlruns").as_uri()


def _mlflow(cfg: DictConfig, run_dir: Path, record: RunRecord) -> None:
    uri = tracking_uri(cfg)
    if uri.startswith("file:"):
        # MLflow 3 refuses its file store unless asked: a local store with no server is the point here
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    experiment = _experiment(client, record.job["experiment"])
    tags = {"metarec.run_dir": str(run_dir), "metarec.status": record.status,
            "metarec.overrides": " ".join(record.job["overrides"])}
    run = client.create_run(experiment, run_name=record.job["name"], tags=tags).info.run_id
    now = int(time.time() * 1000)
    step, test = record.test_metrics()
    rows = [*record.metric_rows(), (step, test)]
    params = [Param(mlflow_name(k), v[:6000]) for k, v in record.params().items()]
    metrics = [Metric(mlflow_name(k), v, now, s) for s, values in rows for k, v in values.items()]
    for i in range(0, len(params), 100):  # MLflow's limits per batch: 100 params, 1000 metrics
        client.log_batch(run, params=params[i:i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run, metrics=metrics[i:i + 1000])
    store = Path(uri.removeprefix("file://").removeprefix("file:")) if uri.startswith("file:") else None
    for path in record.files(skip=(store,) if store else ()):
        rel = path.relative_to(run_dir).parent.as_posix()
        client.log_artifact(run, str(path), None if rel == "." else rel)
    client.set_terminated(run, MLFLOW_STATUS.get(record.status, "FAILED"))
    log.info("trainer.loggers: mlflow run %s in experiment %r at %s", run, record.job["experiment"], uri)


def _experiment(client, name: str) -> str:
    """The experiment's id, made if new; parallel jobs of one sweep may race to make it."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # noqa: BLE001 - another job made it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def wandb_mode() -> str:
    """$WANDB_MODE if set; online when an API key is at hand (the environment or ~/.netrc), else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        return "online" if netrc.netrc().authenticators("api.wandb.ai") else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"


def _wandb(cfg: DictConfig, run_dir: Path, record: RunRecord) -> None:
    import wandb
    run = wandb.init(project="metarec", group=record.job["experiment"] if record.job["multirun"] else None, name=record.job["name"],
                     dir=str(run_dir), config=record.params(), mode=wandb_mode(), tags=[record.status],
                     settings=wandb.Settings(console="off", silent=True, init_timeout=300))  # a loaded machine starts W&B's service slowly
    try:
        for step, values in record.metric_rows():
            run.log(values, step=step)
        run.summary.update(record.test_metrics()[1])  # the test metrics: one value each, not a curve
        for path in record.files():  # files in the run's own folder are W&B's to upload (wandb.save would only link them)
            copy = Path(run.dir) / path.relative_to(run_dir)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy)
    finally:
        run.finish(exit_code=0 if record.status == "finished" else 1)
        # finish() may return before W&B's service has written the run file (seen on a loaded machine);
        # shutting the service down waits for it, so the offline files are whole when the job ends
        wandb.teardown()



def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
