"""Checkpoints: atomic writes, plain-data loading, and one clear line for every file that is not one."""
import errno
import os
import pickle

import pytest
import torch

from metarec.run import checkpoint
from metarec.errors import UserError


def plain(step=1) -> dict:
    return {"model": {"w": torch.full((3,), float(step))}, "config": {"seed": 0}, "step": step}


class Crafted:
    """Unpickling this runs os.system: what a malicious checkpoint from the internet would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_save_load_roundtrip_leaves_no_temp_file(tmp_path):
    checkpoint.save(plain(3), tmp_path / "ck" / "last.pt")
    assert checkpoint.load(tmp_path / "ck" / "last.pt")["step"] == 3
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["last.pt"]


def test_a_full_disk_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save(plain(1), path)
    real_open = open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("builtins.open", lambda file, mode="r", *a, **k: FullDisk(real_open(file, mode, *a, **k)))
    with pytest.raises(UserError, match=r"could not write checkpoint .*last.pt \(No space left on device\): "
                                        r"the previous last.pt is intact"):
        checkpoint.save(plain(2), path)
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_stale_temp_files_of_a_killed_writer_are_removed(tmp_path):
    checkpoint.save(plain(1), tmp_path / "last.pt")
    (tmp_path / ".last.pt.tmp-12345").write_bytes(b"PK\x03\x04half")
    checkpoint.remove_stale_temps(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("pickler", ["torch", "pickle"])
def test_a_crafted_checkpoint_is_refused_and_runs_no_code(tmp_path, pickler):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    payload = {"model": Crafted(marker), "config": {}, "step": 1}
    if pickler == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UserError, match="was refused: it holds objects that could run code") as e:
        checkpoint.load(path)
    assert "posix.system" in str(e.value) or "Unsupported" in str(e.value)
    assert not marker.exists()
    if pickler == "torch":  # the file is a real exploit: unrestricted loading does run it
        torch.load(path, weights_only=False)
        assert marker.exists()


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"user\titem\trating\n", "is not a torch file"),
    ("truncated", "is truncated (its zip directory is missing"),
    ({"weights": torch.zeros(2)}, "is a torch file but not a metarec checkpoint"),
    (torch.zeros(2), "is a torch file but not a metarec checkpoint"),
])
def test_files_that_are_not_checkpoints_give_one_clear_line(tmp_path, content, message):
    path = tmp_path / "x.pt"
    if content == "truncated":
        checkpoint.save(plain(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(UserError) as e:
        checkpoint.load(path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_config_that_does_not_fit_the_schema_is_one_clear_line(tmp_path):
    ck = {"model": {}, "step": 1, "metarec": "0.0.1",
          "config": {"data": {"name": "sinusoid", "shots": 5}, "model": {"name": "mlp"},
                     "algo": {"name": "maml", "inner_lr": "fast"}, "device": {"name": "cpu"}}}
    with pytest.raises(UserError, match=r"does not fit this metarec's schema .*inner_lr.*0\.0\.1"):
        checkpoint.config(ck, tmp_path / "x.pt")
    ck["config"]["algo"] = {"name": "maml", "inner_lrr": 0.1}
    with pytest.raises(UserError, match="inner_lrr"):
        checkpoint.config(ck, tmp_path / "x.pt")
    ck["config"]["algo"] = {"name": "maml", "inner_lr": 0.5}
    assert checkpoint.config(ck, tmp_path / "x.pt").algo.inner_lr == 0.5
