"""The MF floors' cache (metarec/data/floor_cache.py): computed once and read back, every input in the
key, a damaged or foreign file named in one warning and computed again, and a second source of the same
data, split and settings that reads the floors without fitting anything."""
import logging

import numpy as np
import pytest
import torch
from conftest import ML100K, needs_ml100k

from metarec.data import cache_check, floor_cache
from metarec.data.mf_floors import MFSettings


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv(floor_cache.FOLDER_ENV, str(tmp_path / "floors"))
    return tmp_path / "floors"


def inputs(**changed):
    g = torch.Generator().manual_seed(0)
    base = dict(fingerprint="abc", train_ratings=np.arange(50), support=torch.randint(0, 50, (4, 6), generator=g),
                support_mask=torch.ones(4, 6), query=torch.randint(0, 50, (4, 3), generator=g), mu=3.5,
                settings=MFSettings())
    return {**base, **changed}


class Counting:
    """A floors computation that counts its calls and returns fixed floors [4, 3]."""

    def __init__(self):
        self.calls = 0
        self.floors = {"mf_foldin": torch.full((4, 3), 3.25, dtype=torch.float64),
                       "mf_transductive": torch.arange(12, dtype=torch.float64).reshape(4, 3)}

    def __call__(self):
        self.calls += 1
        return self.floors


def test_floors_are_computed_once_and_read_back(folder):
    k, compute = floor_cache.key(**inputs()), Counting()
    first = floor_cache.cached(k, (4, 3), compute)
    again = floor_cache.cached(k, (4, 3), compute)
    assert compute.calls == 1
    for name in floor_cache.NAMES:
        assert torch.equal(first[name], compute.floors[name]) and torch.equal(again[name], compute.floors[name])
    assert [p.name for p in folder.iterdir() if not p.name.endswith(".sha256")] == [f"{k[:32]}.pt"]


def test_every_input_is_in_the_key():
    base = floor_cache.key(**inputs())
    mask = torch.ones(4, 6)
    mask[2, 5] = 0
    changes = [dict(fingerprint="abd"), dict(train_ratings=np.arange(1, 51)), dict(support=inputs()["support"].flip(0)),
               dict(support_mask=mask), dict(query=inputs()["query"] + 1), dict(mu=3.5000001),
               dict(settings=MFSettings(rank=9)), dict(settings=MFSettings(foldin_reg=3.5)), dict(train_ratings=np.arange(49))]
    keys = [floor_cache.key(**inputs(**c)) for c in changes]
    assert base not in keys and len(set(keys)) == len(keys)
    assert floor_cache.key(**inputs()) == base


@pytest.mark.parametrize("damage", ["bytes", "stamp", "foreign", "shape"])
def test_a_file_not_to_be_trusted_is_named_and_computed_again(folder, caplog, damage):
    k, compute = floor_cache.key(**inputs()), Counting()
    floor_cache.cached(k, (4, 3), compute)
    path = floor_cache.path_of(k)
    if damage == "bytes":  # a flipped byte: the stamp no longer matches
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "stamp":
        cache_check.stamp_path(path).unlink()
    elif damage == "foreign":  # a whole, stamped file of another key under this name
        torch.save({"key": "0" * 64, **compute.floors}, path)
        cache_check.write_stamp(path)
    else:
        torch.save({"key": k, **{n: v[:, :2] for n, v in compute.floors.items()}}, path)
        cache_check.write_stamp(path)
    with caplog.at_level(logging.WARNING):
        got = floor_cache.cached(k, (4, 3), compute)
    assert compute.calls == 2 and torch.equal(got["mf_transductive"], compute.floors["mf_transductive"])
    lines = [r.getMessage() for r in caplog.records if "floor cache" in r.getMessage()]
    assert len(lines) == 1 and str(path) in lines[0] and "\n" not in lines[0]
    caplog.clear()
    floor_cache.cached(k, (4, 3), compute)  # written again, whole: read without a word
    assert compute.calls == 2 and not caplog.records


@needs_ml100k()
def test_a_second_source_reads_the_floors_without_fitting(folder, monkeypatch):
    from metarec.config.compose import compose
    from metarec.data import build_source, mf_floors
    cfg = compose(["data=movielens", f"data.root={ML100K}", "data.split=[0.3,0.1,0.6]"]).data
    first = build_source(cfg, torch.device("cpu"), 0, progress=False)
    want = first.floors("user_cold")

    def refuse(*a, **k):
        raise AssertionError("the floors were fitted again")

    monkeypatch.setattr(mf_floors, "MFFloors", refuse)
    second = build_source(cfg, torch.device("cpu"), 0, progress=False)
    got = second.floors("user_cold")
    for name in ("mf_foldin", "mf_transductive", "bias"):
        assert torch.equal(got[name], want[name])
    other = build_source(compose(["data=movielens", f"data.root={ML100K}", "data.split=[0.3,0.1,0.6]",
                                  "data.mf_rank=3"]).data, torch.device("cpu"), 0, progress=False)
    with pytest.raises(AssertionError, match="fitted again"):  # other settings: another key, so a fit
        other.floors("user_cold")
