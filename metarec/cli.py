"""The `metarec` command: train | eval | data info dispatch to Hydra apps; report and bench are plain.

    metarec train algo=maml data=movielens
    metarec eval checkpoint=outputs/DATE/TIME/checkpoints/best.pt algo.inner_steps=5
    metarec data info data=movielens
    metarec report outputs/multirun/DATE/TIME
    metarec bench --out bench.json
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from metarec.config import register
from metarec.errors import UserError

USAGE = """usage: metarec COMMAND [ARGS]

commands:
  train   meta-train and evaluate (Hydra app: overrides, -m sweeps, --cfg job, --help)
  eval    re-evaluate a checkpoint:  metarec eval checkpoint=PATH [algo.inner_steps=5 data.shots=5]
  data    data set facts:            metarec data info data=movielens
  report  summarise runs / sweeps:   metarec report outputs/multirun/DATE/TIME
  bench   meta-training throughput:  metarec bench [--out bench.json]
"""
CONF = "pkg://metarec.conf"
log = logging.getLogger("metarec")
register()


def _user_errors(fn):
    """A UserError ends the job with one line (the full trace with HYDRA_FULL_ERROR=1)."""
    def wrapper(cfg: DictConfig):
        try:
            return fn(cfg)
        except UserError as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"metarec: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
    wrapper.__wrapped__ = fn
    wrapper.__name__ = fn.__name__
    wrapper.__module__ = fn.__module__
    return wrapper


def _run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
@_user_errors
def train_app(cfg: DictConfig) -> float:
    from metarec.train import train
    return train(cfg, _run_dir())


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
@_user_errors
def eval_app(cfg: DictConfig) -> None:
    from metarec.evaluate_checkpoint import evaluate_checkpoint
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("checkpoint=", "eval.checkpoint="))]
    evaluate_checkpoint(cfg, overrides, _run_dir())


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
@_user_errors
def data_app(cfg: DictConfig) -> None:
    from metarec.train import build_source, resolve_device
    source = build_source(cfg.data, resolve_device(cfg.device.name), cfg.seed)
    print(json.dumps(source.info(), indent=2))


def _hydra(app, name: str, argv: list[str]) -> int:
    # Hydra reads sys.argv; the program name shows in --help and shell completion.
    named = any(a.startswith("hydra.job.name=") for a in argv) or "--shell-completion" in argv
    sys.argv = [f"metarec {name}", *([] if named else [f"hydra.job.name={name}"]), *argv]
    app()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        return _hydra(train_app, "train", rest)
    if cmd == "eval":
        return _hydra(eval_app, "eval", rest)
    if cmd == "data":
        if not rest or rest[0] != "info":
            print("metarec: error: usage: metarec data info [data=movielens data.variant=ml-1m ...]", file=sys.stderr)
            return 2
        return _hydra(data_app, "data", ["hydra.output_subdir=null", "hydra/job_logging=disabled",
                                         "hydra.run.dir=.", *rest[1:]])
    if cmd == "report":
        from metarec.report import main as report_main
        return report_main(rest)
    if cmd == "bench":
        from metarec.bench import main as bench_main
        return bench_main(rest)
    print(f"metarec: error: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
