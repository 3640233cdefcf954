"""Typed config schemas, registered in Hydra's ConfigStore so bad types and unknown keys fail at compose time.

The data and algo nodes take the schema of the data set / algorithm they name: each algorithm's is the
config dataclass at the top of its file (metarec/algos/NAME.py), so a key of another algorithm is an
unknown key (`algo=ridge algo.first_order=true` fails as `algo.inner_lrr=0.1` does)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from metarec.algos import ALGOS
from metarec.checks import rule
from metarec.data.atomic_config import AtomicConfig
from metarec.data.omniglot import OmniglotConfig
from metarec.data.protocol_config import ProtocolConfig
from metarec.data.sinusoid import SinusoidConfig


@dataclass
class MovieLensConfig(ProtocolConfig):
    """data=movielens: which copy, and the protocol's keys (metarec/data/protocol_config.py)."""
    name: str = "movielens"
    variant: str = rule("ml-100k", "one of ml-100k, ml-1m")  # ml-100k | ml-1m
    root: Optional[str] = None  # a folder with GroupLens or RecBole atomic files; else cache, then download
    cache_dir: Optional[str] = None  # default: $METAREC_CACHE or ~/.cache/metarec
    cut_year: Optional[int] = rule(None, "any")  # items released after it are new; null = 1996 (ml-100k) / 1997 (ml-1m)
    zip_prefix: int = rule(1, "in [0, 5]")  # leading zip-code characters used as a feature


@dataclass
class ModelConfig:
    name: str = MISSING  # a key of metarec.models.MODELS (metarec/config/fit.py refuses any other)
    embedding_dim: int = rule(32, ">= 1")  # melu: one embedding per field
    hidden: list[int] = rule([64, 64], "each >= 1")  # MLP widths
    channels: int = rule(64, ">= 1")  # conv4


@dataclass
class TrainerConfig:
    max_steps: int = rule(1000, ">= 1")  # meta-updates
    meta_batch_size: int = rule(32, ">= 1")  # tasks per meta-update
    val_every: int = rule(100, ">= 1")  # validation (and last.pt) every N steps
    log_every: int = rule(20, ">= 1")
    patience: Optional[int] = rule(None, ">= 1")  # stop after N validations without improvement; null = never
    resume: Optional[str] = None  # auto (newest last.pt of this run dir) | PATH
    compile: bool = False  # torch.compile the inner loop
    fast_paths: bool = True  # the engine's written-out paths for models that declare them; false: the core path alone (debugging, new models)
    tensorboard: bool = False  # an alias of "tensorboard" in loggers
    loggers: list[str] = field(default_factory=list)  # experiment trackers: tensorboard, mlflow, wandb (metarec/run/loggers.py)
    tracking_experiment: Optional[str] = None  # mlflow / wandb: null = a multirun's sweep folder, else "metarec"
    tracking_uri: Optional[str] = None  # mlflow: null = $MLFLOW_TRACKING_URI, else a file store in ./outputs/mlruns
    progress: bool = True  # tqdm bar
    select_state: Optional[str] = rule(None, "one of val, val_new, val_item_cold")  # the validation state best.pt is chosen on; null = the algorithm's (val; val_new for cold-item ones)


@dataclass
class EvalConfig:
    max_steps: int = rule(5, ">= 0")  # trace metrics after 0..N adaptation steps (at least eval_steps)
    ndcg_gain: str = rule("exp", "one of exp, linear")  # exp (2^r - 1, as MeLU) | linear (r)
    chunk: int = rule(512, ">= 1")  # evaluation tasks per batch
    checkpoint: Optional[str] = None  # metarec eval: the checkpoint to evaluate
    split: str = rule("test", "one of test, val")  # metarec eval: test (the test states) | val (validation states only; MovieLens: val, val_new, val_item_cold with data.val_items)
    ranking: str = rule("query", "one of query, catalog")  # query (each user's query items, MeLU's) | catalog (also every item of the state's pool: metarec/evaluation/ranking.py)
    allow_protocol_change: bool = False  # metarec eval: accept a seed / data.* that redraws the checkpoint's split (marked in eval.md)


@dataclass
class DeviceConfig:
    name: str = rule("auto", "one of cpu, cuda, auto")  # cpu | cuda | auto
    threads: Optional[int] = rule(None, ">= 1")  # torch threads; null = all cores (recorded in run_info.json)
    # deterministic kernels (torch.use_deterministic_algorithms): on a GPU, index_add and scatter-adds
    # otherwise sum with atomics in no fixed order, so only this guarantees that a resumed CUDA run
    # equals an uninterrupted one bit for bit; about a third slower (H200). The CPU is deterministic either way.
    deterministic: bool = False


@dataclass
class Config:
    data: Any = MISSING
    model: ModelConfig = MISSING
    algo: Any = MISSING  # an algorithm's own schema (its Config), chosen by algo=NAME
    device: DeviceConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = rule(0, ">= 0")
    checkpoint: Optional[str] = None  # metarec eval checkpoint=PATH


DATA_SCHEMAS = {"movielens": MovieLensConfig, "sinusoid": SinusoidConfig, "omniglot": OmniglotConfig,
                "atomic": AtomicConfig}


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    # Schemas live in their own group, so they never show up as choices of data/model/algo/device.
    for name, node in DATA_SCHEMAS.items():
        cs.store(group="schema/data", name=name, node=node)
    cs.store(group="schema", name="model", node=ModelConfig)
    for name, algo in ALGOS.items():
        cs.store(group="schema/algo", name=name, node=algo.Config)
    cs.store(group="schema", name="device", node=DeviceConfig)


def checked(raw: dict) -> DictConfig:
    """A written config (a checkpoint's) against this metarec's schemas: the data set's and the algorithm's
    that it names; keys it predates take their defaults, a wrong type or an unknown key raises."""
    data, algo = DATA_SCHEMAS[raw["data"]["name"]], ALGOS[raw["algo"]["name"]].Config
    schema = OmegaConf.merge(OmegaConf.structured(Config),
                             {"data": OmegaConf.structured(data), "algo": OmegaConf.structured(algo)})
    return OmegaConf.merge(schema, raw)
