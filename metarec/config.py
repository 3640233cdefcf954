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
from metarec.data.atomic_config import AtomicConfig
from metarec.data.omniglot import OmniglotConfig
from metarec.data.sinusoid import SinusoidConfig


@dataclass
class MovieLensConfig:
    name: str = "movielens"
    variant: str = "ml-100k"  # ml-100k | ml-1m
    root: Optional[str] = None  # a folder with GroupLens or RecBole atomic files; else cache, then download
    cache_dir: Optional[str] = None  # default: $METAREC_CACHE or ~/.cache/metarec
    query_size: int = 10  # query ratings per task (MeLU: 10)
    shots: Optional[int] = None  # support ratings per evaluation task; null = all the rest
    min_ratings: int = 13  # users keep a partition when they have min..max ratings in it (MeLU: 13-100)
    max_ratings: int = 100
    heavy_users: bool = False  # meta-train users above max_ratings train too (MeLU drops them): see movielens.py
    cut_year: Optional[int] = None  # items released after it are new; null = 1996 (ml-100k) / 1997 (ml-1m)
    split: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])  # meta-train / validation / test users
    split_seed: Optional[int] = None  # null = the run's seed
    item_ids: bool = False  # item id embeddings (a cold item has no trained id: UNK)
    item_id_dropout: float = 0.1  # share of training ids replaced by UNK so the UNK row is trained
    zip_prefix: int = 1  # leading zip-code characters used as a feature
    item_stats: bool = True  # item context from other users' ratings (training pool; + support sets at evaluation)
    item_factors: int = 0  # rank of collaborative item factors fitted on the training ratings; 0 = none
    factor_reg: float = 10.0  # their ridge penalty in the factorisation
    factor_folds: int = 5  # meta-train users read factors fitted without their fold (cross-fitting)
    mf_rank: int = 10  # the mf_foldin / mf_transductive floors' rank (metarec/data/mf_floors.py) ...
    mf_reg: float = 10.0  # ... the ridge penalty of their factors fitted on the training ratings ...
    mf_foldin_reg: float = 3.0  # ... of a task's own factors in mf_foldin ...
    mf_transductive_reg: float = 10.0  # ... and of every factor in mf_transductive's joint fit
    transductive: bool = False  # the exact transductive context as float inputs (metarec/data/transductive.py) ...
    trans_rank: int = 10  # ... its items' factors from the visible ratings (0 = bias and count only) ...
    trans_reg: float = 10.0  # ... their ALS ridge penalty ...
    trans_folds: int = 5  # ... and the cross-fitting folds of users


@dataclass
class ModelConfig:
    name: str = MISSING  # melu | mlp | conv4
    embedding_dim: int = 32  # melu: one embedding per field
    hidden: list[int] = field(default_factory=lambda: [64, 64])  # MLP widths
    channels: int = 64  # conv4


@dataclass
class TrainerConfig:
    max_steps: int = 1000  # meta-updates
    meta_batch_size: int = 32  # tasks per meta-update
    val_every: int = 100  # validation (and last.pt) every N steps
    log_every: int = 20
    patience: Optional[int] = None  # stop after N validations without improvement; null = never
    resume: Optional[str] = None  # auto (newest last.pt of this run dir) | PATH
    compile: bool = False  # torch.compile the inner loop
    fast_paths: bool = True  # the engine's written-out paths for models that declare them; false: the core path alone (debugging, new models)
    tensorboard: bool = False
    progress: bool = True  # tqdm bar


@dataclass
class EvalConfig:
    max_steps: int = 5  # trace metrics after 0..N adaptation steps (at least eval_steps)
    ndcg_gain: str = "exp"  # exp (2^r - 1, as MeLU) | linear (r)
    chunk: int = 512  # evaluation tasks per batch
    checkpoint: Optional[str] = None  # metarec eval: the checkpoint to evaluate
    split: str = "test"  # metarec eval: test (the test states) | val (validation users only; MovieLens: val, val_new)
    ranking: str = "query"  # query (each user's query items, MeLU's) | catalog (also every item of the state's pool: metarec/ranking.py)
    allow_protocol_change: bool = False  # metarec eval: accept a seed / data.* that redraws the checkpoint's split (marked in eval.md)


@dataclass
class DeviceConfig:
    name: str = "auto"  # cpu | cuda | auto
    threads: Optional[int] = None  # torch threads; null = all cores (recorded in run_info.json)
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
    seed: int = 0
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
    """A written config (a checkpoint's) against today's schemas: the data set's and the algorithm's
    that it names; keys it predates take their defaults, a wrong type or an unknown key raises."""
    data, algo = DATA_SCHEMAS[raw["data"]["name"]], ALGOS[raw["algo"]["name"]].Config
    schema = OmegaConf.merge(OmegaConf.structured(Config),
                             {"data": OmegaConf.structured(data), "algo": OmegaConf.structured(algo)})
    return OmegaConf.merge(schema, raw)
