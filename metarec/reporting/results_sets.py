"""The results pages beyond MovieLens (DBook under our split and MetaHIN's, MovieTweetings): every ml-100k
method on a data set's protocol (conf/protocol/NAME.yaml), with the method's ml-100k settings carried over.

A method's overrides are `+protocol=NAME algo=ALGO` and every key where its ml-100k preset differs from
that composition (its algo block, and the data, model, trainer and eval keys its preset sets): the
settings chosen on ml-100k's validation users, not re-chosen on this data set's. A method tuned on the
data set's own validation users has a preset of its own (conf/experiment/melu_PROTOCOL_X.yaml, e.g.
melu_movietweetings_reptile), which the page runs instead. A method that reads features the data set
has none of (a user profile on MovieTweetings, which has no user file) is not run, and the page says so.
"""
from __future__ import annotations

import functools
from importlib import resources

from omegaconf import OmegaConf

from metarec.algos import ALGOS
from metarec.config.compose import compose, compose_plain
from metarec.models import MODELS

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


def reads(cfg: dict) -> set[str]:
    """The feature sides ("user", "item") a composed method's model and algorithm read (their `reads`)."""
    return set(ALGOS[cfg["algo"]["name"]].reads) | set(MODELS[cfg["model"]["name"]].reads)


def gives(data_cfg: dict) -> set[str]:
    """The feature sides a data config gives the model: MovieLens both; data=atomic those it names features of."""
    if data_cfg["name"] != "atomic":
        return {"user", "item"}
    return {side for side in ("user", "item") if data_cfg[f"{side}_features"]}


@functools.lru_cache(maxsize=None)
def missing_sides(data: str, ml100k_overrides: tuple[str, ...]) -> tuple[str, ...]:
    """The sides one ml-100k method reads that data set `data` does not give (empty: it applies)."""
    cfg = compose_plain(list(carried(data, ml100k_overrides)))
    return tuple(sorted(reads(cfg) - gives(cfg["data"])))


def not_applicable(data: str, ml100k_methods: dict[str, list[str]]) -> dict[str, str]:
    """method -> why it does not run on data set `data` (it reads features the data has none of)."""
    out = {}
    for m, o in ml100k_methods.items():
        sides = missing_sides(data, tuple(o))
        if sides:
            out[m] = f"reads {' and '.join(sides)} fields, and the protocol gives the model none (data.{sides[0]}_features)"
    return out


def skipped_line(data: str, ml100k_methods: dict[str, list[str]]) -> str:
    """One sentence for the page on the methods that do not run on `data`, grouped by why ('' if none)."""
    by_reason: dict[str, list[str]] = {}
    for m, why in not_applicable(data, ml100k_methods).items():
        by_reason.setdefault(why, []).append(m)
    return " ".join(f"Not run here: {', '.join(ms)}; each {why}." for why, ms in by_reason.items())


def own_preset(data: str, ml100k_overrides: list[str]) -> list[str] | None:
    """The data set's own preset of a method, where one was tuned on its validation users:
    experiment=melu_ml100k_X runs as experiment=melu_PROTOCOL_X when conf/experiment/melu_PROTOCOL_X.yaml exists."""
    preset, *rest = ml100k_overrides
    if not preset.startswith("experiment=melu_ml100k_"):
        return None
    name = preset.removeprefix("experiment=").replace("melu_ml100k", f"melu_{PROTOCOLS[data]}", 1)
    found = (resources.files("metarec.conf") / "experiment" / f"{name}.yaml").is_file()
    return [f"experiment={name}", *rest] if found else None


def presets(data: str, ml100k_methods: dict[str, list[str]]) -> dict[str, list[str]]:
    """method -> its overrides on data set `data` (one of PROTOCOLS), for every method that applies there:
    the data set's own preset where there is one, else the ml-100k preset's settings carried over."""
    skip = not_applicable(data, ml100k_methods)
    return {m: own_preset(data, o) or list(carried(data, tuple(o)))
            for m, o in ml100k_methods.items() if m not in skip}
