"""Every preset composes against the schemas; each algorithm's schema holds its own keys and the ones
the trainer reads for any algorithm; a written config rebuilds against them."""
import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from metarec.algos import ALGOS
from metarec.config.compose import compose
from metarec.config.schema import checked

CONF = Path(__file__).resolve().parents[1] / "conf"
PRESETS = ([f"experiment={p.stem}" for p in sorted((CONF / "experiment").glob("*.yaml"))]
           + [f"hparams_search={p.stem}" for p in sorted((CONF / "hparams_search").glob("*.yaml"))]
           + [f"algo={name}" + (" model=mamo" if name == "mamo" else "") for name in ALGOS])  # mamo: its own model


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_its_config_rebuilds_from_a_checkpoint(preset):
    cfg = compose(preset.split())
    assert OmegaConf.get_type(cfg.algo) is ALGOS[cfg.algo.name].Config
    written = OmegaConf.to_container(cfg, resolve=True)  # what a checkpoint stores
    assert OmegaConf.to_container(checked(written), resolve=True) == written


@pytest.mark.parametrize("name", ALGOS)
def test_each_schema_has_the_keys_the_trainer_reads_and_its_conf_file_names_it(name):
    keys = {f.name for f in dataclasses.fields(ALGOS[name].Config)}
    assert {"name", "inner_steps", "eval_steps", "meta_lr", "weight_decay"} <= keys
    assert f"/schema/algo/{name}@_here_" in (CONF / "algo" / f"{name}.yaml").read_text()
    assert ALGOS[name].Config().name == name


def test_every_data_set_of_the_registry_has_its_schema():
    from metarec.config.schema import DATA_SCHEMAS
    from metarec.data import DATASETS
    assert list(DATA_SCHEMAS) == list(DATASETS)
    assert all(DATA_SCHEMAS[name]().name == name for name in DATASETS)
