"""The config `metarec train OVERRIDES` resolves to, composed by Hydra outside a run.

The bench, the results page and the tests compose presets this way instead of starting a run.
"""
from __future__ import annotations


def compose(overrides: list[str], check: bool = True):
    """The DictConfig `metarec train OVERRIDES` would run with (schemas registered, interpolations kept,
    checked unless check=False: a value out of its range or a model that does not fit raises
    metarec.errors.UserError)."""
    from hydra import compose as hydra_compose, initialize_config_module
    from metarec.config.schema import register
    register()
    from metarec.config.fit import check_config
    with initialize_config_module("metarec.conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides)
    if check:
        check_config(cfg)  # ranges and fit, as every command checks them
    return cfg


def compose_plain(overrides: list[str]) -> dict:
    """The same config as plain containers with interpolations resolved (what .hydra/config.yaml holds)."""
    from omegaconf import OmegaConf
    return OmegaConf.to_container(compose(overrides), resolve=True)
