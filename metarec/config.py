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
from metarec.checks import ordered, rule, shares
from metarec.data.omniglot import OmniglotConfig
from metarec.data.sinusoid import SinusoidConfig


@dataclass
class MovieLensConfig:
    name: str = "movielens"
    variant: str = rule("ml-100k", "one of ml-100k, ml-1m")  # ml-100k | ml-1m
    root: Optional[str] = None  # a folder with GroupLens or RecBole atomic files; else cache, then download
    cache_dir: Optional[str] = None  # default: $METAREC_CACHE or ~/.cache/metarec
    query_size: int = rule(10, ">= 1")  # query ratings per task (MeLU: 10)
    shots: Optional[int] = rule(None, ">= 1")  # support ratings per evaluation task; null = all the rest
    min_ratings: int = rule(13, ">= 2")  # users keep a partition when they have min..max ratings in it (MeLU: 13-100)
    max_ratings: int = rule(100, ">= 2")
    heavy_users: bool = False  # meta-train users above max_ratings train too (MeLU drops them): see movielens.py
    cut_year: Optional[int] = rule(None, "any")  # items released after it are new; null = 1996 (ml-100k) / 1997 (ml-1m)
    split: list[float] = rule([0.7, 0.1, 0.2], shares(3))  # meta-train / validation / test users
    split_seed: Optional[int] = rule(None, ">= 0")  # null = the run's seed
    item_ids: bool = False  # item id embeddings (a cold item has no trained id: UNK)
    item_id_dropout: float = rule(0.1, "in [0, 1)")  # share of training ids replaced by UNK so the UNK row is trained
    zip_prefix: int = rule(1, "in [0, 5]")  # leading zip-code characters used as a feature
    item_stats: bool = True  # item context from other users' ratings (training pool; + support sets at evaluation)
    item_factors: int = rule(0, ">= 0")  # rank of collaborative item factors fitted on the training ratings; 0 = none
    factor_reg: float = rule(10.0, "> 0")  # their ridge penalty in the factorisation
    factor_folds: int = rule(5, ">= 2")  # meta-train users read factors fitted without their fold (cross-fitting)
    mf_rank: int = rule(10, ">= 1")  # the mf_foldin / mf_transductive floors' rank (metarec/data/mf_floors.py) ...
    mf_reg: float = rule(10.0, "> 0")  # ... the ridge penalty of their factors fitted on the training ratings ...
    mf_foldin_reg: float = rule(3.0, "> 0")  # ... of a task's own factors in mf_foldin ...
    mf_transductive_reg: float = rule(10.0, "> 0")  # ... and of every factor in mf_transductive's joint fit

    @staticmethod
    def relations(c, prefix: str) -> list[str]:
        """A task keeps query_size ratings and at least one support rating."""
        return ordered(c, prefix, ("query_size", "<", "min_ratings"), ("min_ratings", "<=", "max_ratings"))


@dataclass
class ModelConfig:
    name: str = MISSING  # melu | mlp | conv4
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
    tensorboard: bool = False
    progress: bool = True  # tqdm bar


@dataclass
class EvalConfig:
    max_steps: int = rule(5, ">= 0")  # trace metrics after 0..N adaptation steps (at least eval_steps)
    ndcg_gain: str = rule("exp", "one of exp, linear")  # exp (2^r - 1, as MeLU) | linear (r)
    chunk: int = rule(512, ">= 1")  # evaluation tasks per batch
    checkpoint: Optional[str] = None  # metarec eval: the checkpoint to evaluate
    split: str = rule("test", "one of test, val")  # metarec eval: test (the test states) | val (validation users only; MovieLens: val, val_new)


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


DATA_SCHEMAS = {"movielens": MovieLensConfig, "sinusoid": SinusoidConfig, "omniglot": OmniglotConfig}


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
    """A written config (a checkpoint's) against today's schemas: the data set's and the algorithm's
    that it names; keys it predates take their defaults, a wrong type or an unknown key raises."""
    data, algo = DATA_SCHEMAS[raw["data"]["name"]], ALGOS[raw["algo"]["name"]].Config
    schema = OmegaConf.merge(OmegaConf.structured(Config),
                             {"data": OmegaConf.structured(data), "algo": OmegaConf.structured(algo)})
    return OmegaConf.merge(schema, raw)
