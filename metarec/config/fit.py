"""Whether a config can run, said before any data is read: every key in its declared range
(metarec/checks.py), and a model, data set and algorithm that fit together.

Each model class declares the data kinds it reads (`data_kinds`: rating | regression |
classification, what a data set's TaskSource.kind says) and what it offers an algorithm (`offers`:
metarec/models/base.py says what each promises); each algorithm declares the data kinds it fits
(`data_kinds`) and what it needs of the model (`model_needs(cfg)`). A mismatch is one line naming
both and what would fit.
"""
from __future__ import annotations

from metarec.checks import check
from metarec.errors import UserError


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
    if kind not in M.data_kinds:
        raise UserError(f"model={model} does not fit data={data}: {model} reads {_kinds(M.data_kinds)} data, "
                        f"{data} is {kind} data; {_fitting_models(kind, MODELS)}")
    if kind not in A.data_kinds:
        raise UserError(f"algo={algo} does not fit data={data}: {algo} fits {_kinds(A.data_kinds)} data, "
                        f"{data} is {kind} data")
    why = A.data_needs(cfg.data)
    if why:
        raise UserError(f"algo={algo} does not fit data={data} as configured: {why}")
    needs = A.model_needs(cfg.algo)
    missing = [need for need in needs if need not in M.offers]
    if missing:
        others = [n for n, m in MODELS.items() if set(needs) <= set(m.offers) and kind in m.data_kinds]
        algos = [n for n, a in ALGOS.items() if kind in a.data_kinds and set(a.model_needs(cfg.algo)) <= set(M.offers)]
        fits = (f"use model={' or model='.join(others)}" if others
                else f"no model for {kind} data has them: choose another algo ({', '.join(algos)})")
        raise UserError(f"algo={algo} does not fit model={model}: {algo} needs a model with {', '.join(map(_offer, missing))}, "
                        f"and {model} has none; {fits}")


def _kinds(kinds) -> str:
    return " or ".join(kinds)


def _offer(name: str) -> str:
    from metarec.models.base import OFFERS
    return OFFERS[name]


def _fitting_models(kind: str, models: dict) -> str:
    fits = [n for n, m in models.items() if kind in m.data_kinds]
    return f"use model={' or model='.join(fits)}" if fits else f"no model here reads {kind} data"
