"""Whether a config can run, said before any data is read: every key in its declared range
(metarec/checks.py), and a model, data set and algorithm that fit together.

Each model class declares the data kinds it reads (`data_kinds`: rating | regression |
classification, what a data set's TaskSource.kind says) and what it offers an algorithm (`offers`:
"prompt" for prompt vectors, "last_layer" for a head whose last layer ridge can solve); each
algorithm declares the data kinds it fits (`data_kinds`) and what it needs of the model
(`model_needs(cfg)`). A mismatch is one line naming both and what would fit.
"""
from __future__ import annotations

from metarec.checks import check
from metarec.errors import UserError

KINDS = ("rating", "regression", "classification")


def check_config(cfg) -> None:
    """Ranges, then fit, then the packages its switches need: raises one UserError line."""
    from metarec.config.extras import check_packages
    check(cfg)
    check_fit(cfg)
    check_packages(cfg)


def check_fit(cfg) -> None:
    from metarec.algos import ALGOS
    from metarec.data import DATASETS, source_class
    from metarec.models import MODELS
    data, model, algo = cfg.data.name, cfg.model.name, cfg.algo.name
    for group, name, known in (("data", data, DATASETS), ("model", model, MODELS), ("algo", algo, ALGOS)):
        if name not in known:
            raise UserError(f"{group}={name!r} is not one of {', '.join(known)}")
    kind, M, A = source_class(data).kind, MODELS[model], ALGOS[algo]
    if kind not in _reads(M):
        raise UserError(f"model={model} does not fit data={data}: {model} reads {_kinds(_reads(M))} data, "
                        f"{data} is {kind} data; {_fitting_models(kind, MODELS)}")
    if kind not in A.data_kinds:
        raise UserError(f"algo={algo} does not fit data={data}: {algo} fits {_kinds(A.data_kinds)} data, "
                        f"{data} is {kind} data")
    why = A.data_needs(cfg.data)
    if why:
        raise UserError(f"algo={algo} does not fit data={data} as configured: {why}")
    needs = A.model_needs(cfg.algo)
    missing = [need for need in needs if need not in _offers(M)]
    if missing:
        others = [n for n, m in MODELS.items() if set(needs) <= set(_offers(m)) and kind in _reads(m)]
        algos = [n for n, a in ALGOS.items() if kind in a.data_kinds and set(a.model_needs(cfg.algo)) <= set(_offers(M))]
        fits = (f"use model={' or model='.join(others)}" if others
                else f"no model for {kind} data has them: choose another algo ({', '.join(algos)})")
        raise UserError(f"algo={algo} does not fit model={model}: {algo} needs a model with {', '.join(map(_offer, missing))}, "
                        f"and {model} has none; {fits}")


def _reads(model_class) -> tuple[str, ...]:
    """A model's data kinds; one that declares none is taken to read every kind."""
    return getattr(model_class, "data_kinds", KINDS)


def _offers(model_class) -> tuple[str, ...]:
    return getattr(model_class, "offers", ())


def _kinds(kinds) -> str:
    return " or ".join(kinds)


def _offer(name: str) -> str:
    return {"prompt": "prompt vectors", "last_layer": "a one-output last layer on a hidden layer",
            "fields": "MeLU's field embeddings", "mamo": "MAMO's memories (model=mamo)"}.get(name, name)


def _fitting_models(kind: str, models: dict) -> str:
    fits = [n for n, m in models.items() if kind in _reads(m)]
    return f"use model={' or model='.join(fits)}" if fits else f"no model here reads {kind} data"
