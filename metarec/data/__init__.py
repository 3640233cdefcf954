"""Data set name -> its task source (a metarec.tasks.TaskSource); conf/data/NAME.yaml configures it.

The classes are imported when a run asks for one, so that commands that never load data (the CLI's
help, report) do not import every data set's dependencies."""
from __future__ import annotations

import importlib

import torch

from metarec.errors import UserError
from metarec.tasks import TaskSource

DATASETS = {"movielens": "metarec.data.movielens:MovieLensTasks",
            "sinusoid": "metarec.data.sinusoid:SinusoidTasks",
            "omniglot": "metarec.data.omniglot:OmniglotTasks",
            "atomic": "metarec.data.atomic:AtomicTasks"}


def source_class(name: str) -> type[TaskSource]:
    if name not in DATASETS:
        raise UserError(f"data={name!r} is not one of {', '.join(DATASETS)}")
    module, _, cls = DATASETS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_source(data_cfg, device: torch.device, seed: int = 0, progress: bool = True) -> TaskSource:
    """The task source `data=...` names, built from its config (`seed`: the run's, for seeded splits)."""
    return source_class(data_cfg.name).from_config(data_cfg, device, seed, progress)
