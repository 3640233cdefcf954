"""The `metarec` command: train | eval | data info dispatch to Hydra apps; report and bench are plain.

    metarec train algo=maml data=movielens
    metarec eval checkpoint=outputs/DATE/TIME/checkpoints/best.pt algo.inner_steps=5
    metarec data info data=movielens
    metarec report outputs/multirun/DATE/TIME
    metarec bench --out bench.json
    metarec recommend checkpoint=outputs/DATE/TIME/checkpoints/best.pt ratings=my_ratings.csv
    metarec results --check outputs/DATE/TIME     # one run against its results page's per-seed value
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import tempfile
from enum import Enum
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from metarec.errors import UserError
from metarec.config.extras import check_extras

USAGE = """usage: metarec COMMAND [ARGS]

commands:
  train   meta-train and evaluate (Hydra app: overrides, -m sweeps, --cfg job, --help)
  eval    re-evaluate a checkpoint:  metarec eval checkpoint=PATH [algo.inner_steps=5 data.shots=5]
  data    data set facts:            metarec data info data=movielens
  report  summarise runs / sweeps:   metarec report outputs/multirun/DATE/TIME
  bench   meta-training throughput:  metarec bench [--out bench.json]; growth with size: metarec bench --scale
  recommend  top-k for a new user:   metarec recommend checkpoint=PATH ratings=FILE [top_k=10] [--json]
  results the results pages:         metarec results [--data ml-1m] ... (python -m metarec.reporting.results);
          one run against a page:    metarec results --check RUN [--page docs/results-ml1m.md] [--against RUN2]
"""
CONF = "pkg://metarec.conf"
log = logging.getLogger("metarec")


def _user_errors(fn):
    """A UserError ends the job with one line (the full trace with HYDRA_FULL_ERROR=1)."""
    def wrapper(cfg: DictConfig):
        try:
            _checked(cfg, fn.__name__)
            return fn(cfg)
        except UserError as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"metarec: error: {e}", file=sys.stderr)
            hydra_cfg = HydraConfig.get()
            if hydra_cfg.mode == RunMode.MULTIRUN:
                from metarec.run.sweep_failures import mark  # counted by the launching process, wherever this job ran
                mark(Path(hydra_cfg.sweep.dir), hydra_cfg.job.num, _run_dir(), str(e))
                return _failed_value()  # one failed job must not end the sweep; its status.json says why
            raise SystemExit(2) from None
    wrapper.__wrapped__ = fn
    wrapper.__name__ = fn.__name__
    wrapper.__module__ = fn.__module__
    return wrapper


def _checked(cfg: DictConfig, app: str) -> None:
    """Every key in its range, a model, data set and algorithm that fit, the packages it needs: before
    any data is read. A train job's refusal is its run's record too (status.json), as its other failures."""
    from metarec.config.fit import check_config
    try:
        check_config(cfg)
    except UserError as e:
        if app == "train_app":
            from metarec.run.run_folder import BareFolder
            BareFolder(_run_dir()).record_failure(0, str(e))
        raise


def _failed_value() -> float:
    """What a failed sweep job returns: nan, or in an Optuna study the worst value of its direction, so
    that the trial is recorded and the sampler steers away from it (hydra-optuna-sweeper 1.3 on
    optuna 2 ends the whole study on a nan: it fails the trial, then fails telling it so)."""
    direction = HydraConfig.get().sweeper.get("direction")
    if isinstance(direction, Enum):  # the sweeper's schema may give its Direction enum
        direction = direction.name
    if direction == "minimize":
        return math.inf
    if direction == "maximize":
        return -math.inf
    return float("nan")


def _run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
@_user_errors
def train_app(cfg: DictConfig) -> float:
    from metarec.run.train import train
    return train(cfg, _run_dir())


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
@_user_errors
def eval_app(cfg: DictConfig) -> None:
    from metarec.run.evaluate_checkpoint import evaluate_checkpoint
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("checkpoint=", "eval.checkpoint="))]
    evaluate_checkpoint(cfg, overrides, _run_dir())


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
@_user_errors
def data_app(cfg: DictConfig) -> None:
    from metarec.data import build_source
    from metarec.run.device import resolve_device
    source = build_source(cfg.data, resolve_device(cfg.device.name), cfg.seed)
    print(json.dumps(source.info(), indent=2))


def _register() -> None:
    """The schemas (they import the algorithms and data sets' configs): only for commands that compose."""
    from metarec.config.schema import register
    register()


def _hydra(app, name: str, argv: list[str]) -> int:
    # Hydra reads sys.argv; the program name shows in --help and shell completion.
    _register()
    named = any(a.startswith("hydra.job.name=") for a in argv) or "--shell-completion" in argv
    if name != "data" and os.environ.get("HYDRA_FULL_ERROR") != "1":
        try:
            check_extras(argv)  # a launcher or sweeper of a missing extra: the pip command, not Hydra's "Could not find"
            _check_output_dir(argv, name)
        except UserError as e:
            print(f"metarec: error: {e}", file=sys.stderr)
            return 2
    if not named:
        # argparse takes the overrides as one run of positionals: put the job name inside that run
        # (before the first override, else in front), so `-m a=1,2` and `a=1 --cfg job` both parse.
        at = next((i for i, a in enumerate(argv) if "=" in a and not a.startswith("-")), 0)
        argv = [*argv[:at], f"hydra.job.name={name}", *argv[at:]]
    sys.argv = [f"metarec {name}", *argv]
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C while importing or composing, before training takes signals over
        print(f"metarec: SIGINT: stopped before {name} started", file=sys.stderr)
        return 130
    from metarec.run.sweep_failures import ENDED  # every launcher's jobs, counted from their run folders
    if ENDED and ENDED[-1].failed:
        print(f"metarec: error: {ENDED[-1].line()}", file=sys.stderr)
        return 1
    return 0


def _check_output_dir(argv: list[str], name: str = "train") -> None:
    """Hydra creates the run folder before metarec's code runs and reports a failure there with a
    traceback: try the folder's nearest existing parent first, so that a bad path is one line."""
    if any(a in ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "-sc", "--shell-completion")
           for a in argv):
        return  # nothing will be written
    key = "hydra.sweep.dir" if ("-m" in argv or "--multirun" in argv) else "hydra.run.dir"
    given = [a.split("=", 1)[1].strip("'\"") for a in argv if a.startswith(f"{key}=")]
    folder = Path(given[-1].split("${")[0] if given else "outputs")  # the part before an interpolation
    if given and "${" not in given[-1]:
        from metarec.run.run_lock import precheck  # a live run's folder, or a run's records for eval: refused
        precheck(name, folder, key == "hydra.sweep.dir")
    parent = folder.absolute()
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot create the run folder {folder}: {parent} is a file, not a folder: "
                        f"choose another {key}=DIR")
    try:
        tempfile.TemporaryDirectory(dir=parent, prefix=".metarec-check-").cleanup()
    except OSError as e:
        raise UserError(f"cannot create the run folder {folder}: {parent} is not writable ({e.strerror or e}): "
                        f"choose another {key}=DIR") from None


def _completion(argv: list[str]) -> int:
    """Shell completion through the dispatcher: `eval "$(metarec -sc install=bash)"` installs it for
    `metarec`; a query completes the subcommand, then hands the rest of the line to its Hydra app."""
    request = argv[1] if len(argv) > 1 else ""
    words = os.environ.get("COMP_LINE", "").split()
    sub = words[1] if len(words) > 1 else None
    if request.startswith("query=") and sub not in ("train", "eval"):
        typed = words[1] if len(words) > 1 and not os.environ.get("COMP_LINE", "").endswith(" ") else ""
        print(" ".join(c for c in ("train", "eval", "data", "report", "bench", "recommend", "results") if c.startswith(typed)))
        return 0
    if request.startswith("query="):
        os.environ["COMP_LINE"] = " ".join(["metarec", *words[2:]]) + (" " if os.environ["COMP_LINE"].endswith(" ") else "")
    app = eval_app if sub == "eval" else train_app
    _register()
    sys.argv = ["metarec", *argv]
    app()
    return 0


PLAIN = ("report", "bench", "results", "recommend", "data")  # commands without a run's own stop handling


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        return _main(argv)
    from metarec import signals
    signals.EXIT_AT_ONCE = True  # the console script: a recorded stop ends the process at once
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    catcher = None
    try:
        catcher = signals.SignalCatcher() if command in PLAIN else None  # train and eval install their own
        code = _main(sys.argv[1:])
    except SystemExit as e:
        if e.code not in (130, 143):
            raise
        code = e.code
    except KeyboardInterrupt:
        code = _stopped_before_the_end(command, signal.SIGINT)
    except signals.Interrupted as e:
        code = _stopped_before_the_end(command, e.signum)
    finally:
        if catcher is not None:
            catcher.restore()
    if code in (130, 143):  # stopped by SIGINT / SIGTERM, its line printed: exit now, without the
        logging.shutdown()  # interpreter's teardown (freeing a data set's millions of objects took 5 s)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _stopped_before_the_end(command: str, signum: int) -> int:
    print(f"metarec: {signal.Signals(signum).name}: {command} stopped before it finished", file=sys.stderr)
    return 128 + signum


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-sc", "--shell-completion"):
        return _completion(argv)
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
        from metarec.reporting.report import main as report_main
        return report_main(rest)
    if cmd == "bench" and "--scale" in rest:  # time and memory per phase against the ratings (bench_scale.py)
        from metarec.bench.scale import main as scale_main
        return scale_main([a for a in rest if a != "--scale"])
    if cmd == "bench":
        from metarec.bench.speed import main as bench_main
        return bench_main(rest)
    if cmd == "results":  # --check RUN: one run against a page's per-seed values; else `make results`'s pages
        from metarec.reporting import results, results_seeds
        return results_seeds.main(rest) if any(a.startswith("--check") for a in rest) else results.main(rest)
    if cmd == "recommend":
        from metarec.serve.recommend import main as recommend_main
        return recommend_main(rest)
    print(f"metarec: error: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
