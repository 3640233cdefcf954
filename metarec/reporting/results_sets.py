"""The results pages beyond MovieLens (DBook under our split and MetaHIN's, MovieTweetings): every ml-100k
method on a data set's protocol (conf/protocol/NAME.yaml), with the method's ml-100k settings carried over.

A method's overrides are `+protocol=NAME algo=ALGO` and every key where its ml-100k preset differs from
that composition (its algo block, and the data, model, trainer and eval keys its preset sets): the
settings chosen on ml-100k's validation users, not re-chosen on this data set's.
"""
from __future__ import annotations

import functools

from omegaconf import OmegaConf

from metarec.config.compose import compose, compose_plain

PROTOCOLS = {"dbook": "dbook", "dbook-metahin": "dbook_metahin", "movietweetings": "movietweetings"}  # --data -> protocol
CARRIED = ("algo", "model", "data", "trainer", "eval")  # the groups a method's preset may set
SKIP = {("data", "name"), ("data", "variant"), ("data", "cut_year"), ("data", "root"), ("data", "cache_dir"),
        ("data", "zip_prefix")}  # MovieLens' own keys: the protocol names the data


def value(v) -> str:
    """A plain config value as a Hydra command-line override value."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(value(x) for x in v) + "]"
    return str(v)


def differences(want: dict, have: dict, prefix: str) -> list[str]:
    """`key=value` overrides that turn `have` into `want` (nested keys dotted)."""
    out = []
    for key, v in want.items():
        if isinstance(v, dict) and isinstance(have.get(key), dict):
            out += differences(v, have[key], f"{prefix}{key}.")
        elif have.get(key, object()) != v:
            out.append(f"{prefix}{key}={value(v)}")
    return out


@functools.lru_cache(maxsize=None)
def carried(data: str, ml100k_overrides: tuple[str, ...]) -> tuple[str, ...]:
    """The overrides that run one ml-100k method (its preset's overrides) on data set `data`'s protocol."""
    want = compose_plain(list(ml100k_overrides))
    base = [f"+protocol={PROTOCOLS[data]}", f"algo={want['algo']['name']}"]
    if want["model"]["name"] != "melu":
        base.append(f"model={want['model']['name']}")
    have = OmegaConf.to_container(compose(base, check=False), resolve=True)  # unchecked: a fit may need the keys below
    out = list(base)
    for group in CARRIED:
        keep = {k: v for k, v in want[group].items() if (group, k) not in SKIP}
        out += differences(keep, have[group], f"{group}.")
    return tuple(out)


def presets(data: str, ml100k_methods: dict[str, list[str]]) -> dict[str, list[str]]:
    """method -> its overrides on data set `data` (one of PROTOCOLS)."""
    return {m: list(carried(data, tuple(o))) for m, o in ml100k_methods.items()}
