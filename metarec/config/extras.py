"""Which optional extra a command line needs, said before Hydra composes it.

Without the `sweep` extra Hydra knows no `hydra/launcher=joblib` and answers "Could not find
'hydra/launcher/joblib'" with a list of what it has: the user learns nothing about the cure. Here a
Hydra plugin that an override (or a preset it names: hparams_search=NAME builds on the Optuna
sweeper) asks for is looked up first, and a missing one is one line naming the pip command.
"""
from __future__ import annotations

import importlib.util
import re
from importlib import resources

from metarec.errors import UserError

# group option -> (the modules it imports, the extra that installs them)
PLUGINS = {
    "hydra/launcher=joblib": (("hydra_plugins.hydra_joblib_launcher",), "sweep"),
    "hydra/launcher=submitit_local": (("hydra_plugins.hydra_submitit_launcher", "submitit"), "sweep"),
    "hydra/launcher=submitit_slurm": (("hydra_plugins.hydra_submitit_launcher", "submitit"), "sweep"),
    "hydra/launcher=slurm": (("hydra_plugins.hydra_submitit_launcher", "submitit"), "sweep"),  # conf/hydra/launcher/slurm.yaml
    "hydra/sweeper=optuna": (("hydra_plugins.hydra_optuna_sweeper", "optuna"), "sweep"),
}
PRESET_GROUPS = ("hparams_search", "experiment")  # presets whose defaults may pick a launcher or sweeper
_PICKS = re.compile(r"^\s*-\s*(?:override\s+)?/?(hydra/(?:launcher|sweeper))\s*:\s*(\w+)", re.M)


def missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a parent package absent, or a module set to None in sys.modules
        return True


def requested(argv: list[str]) -> list[str]:
    """The `group=option` choices of launchers and sweepers the command line makes, directly or
    through the presets it names."""
    picks = []
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key in ("hydra/launcher", "hydra/sweeper"):
            picks.append(f"{key}={value}")
        elif key in PRESET_GROUPS and value:
            try:
                text = resources.files("metarec.conf").joinpath(key, f"{value}.yaml").read_text()
            except (FileNotFoundError, OSError):
                continue  # an unknown preset: Hydra names it
            picks += [f"{group}={option}" for group, option in _PICKS.findall(text)]
    return picks


def check_packages(cfg) -> None:
    """The packages a composed config's switches need (trainer.tensorboard=true: TensorBoard)."""
    if cfg.trainer.get("tensorboard") and missing("tensorboard"):
        raise UserError("trainer.tensorboard=true needs the tensorboard extra (tensorboard is not installed): "
                        "pip install 'metarec[tensorboard]', or leave trainer.tensorboard=false")
    check_loggers(cfg, missing)


LOGGERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # name -> the module it imports


def check_loggers(cfg, missing) -> None:
    """One UserError line for an unknown logger or one whose package is not installed (`missing(module)`)."""
    for name in cfg.trainer.get("loggers") or []:
        if name not in LOGGERS:
            raise UserError(f"trainer.loggers: {name!r} is not one of {', '.join(LOGGERS)}")
        if missing(LOGGERS[name]):
            raise UserError(f"trainer.loggers=[{name}] needs the {name} extra ({name} is not installed): "
                            f"pip install 'metarec[{name}]', or drop {name} from trainer.loggers")


def check_extras(argv: list[str]) -> None:
    """One UserError line for the first launcher or sweeper whose plugin is not installed."""
    for pick in requested(argv):
        modules, extra = PLUGINS.get(pick, ((), ""))
        absent = [m for m in modules if missing(m)]
        if absent:
            package = absent[0].split(".")[-1].replace("_", "-")
            raise UserError(f"{pick} needs the {extra} extra ({package} is not installed): pip install 'metarec[{extra}]'")
