"""One ml-100k, whichever copy: GroupLens' files and RecBole's atomic files give the same tasks, floors
and derived features; only the source files (and so their fingerprints) differ.

RecBole's copy is written here from GroupLens' one, byte for byte as recbole==1.2.1 ships it (the
digests are download.py's), so no test needs the network. Where the real RecBole files are at hand
($METAREC_RECBOLE_ML100K, or ml-100k in the metarec cache as the mirror leaves it), they are compared too.
"""
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ML100K, needs_ml100k

from metarec.data.cache_check import fingerprint
from metarec.data.download import DEFAULT_SOURCES, default_cache_dir
from metarec.data.movielens_io import ML100K_GENRES

RECBOLE_ENV = "METAREC_RECBOLE_ML100K"  # a folder holding RecBole's ml-100k.inter, .user and .item
RECBOLE_DIGESTS = {Path(m).name: d for s in DEFAULT_SOURCES["ml-100k"] if s.kind == "wheel" for m, d in s.files.items()}
# The source files' own fingerprints (cache_check.fingerprint), recorded: they differ, the tasks do not.
GROUPLENS_FINGERPRINT = "6903058713d1360837384deefaa95ef46402b7f53a6172a82bfde26196f26827"
RECBOLE_FINGERPRINT = "b6d0141955336ebacaaffde1d7e0ecfbe8ceff048944b04cc5da72bc07d37639"
# Tasks per state at split seed 0 (`metarec data info data=movielens`), the same from both copies.
COUNTS = {"warm": 328, "user_cold": 89, "item_cold": 334, "user_item_cold": 111, "val": 44, "val_new": 47}
PRESET = ["data.split=[0.6,0.2,0.2]", "data.heavy_users=true", "data.item_ids=true"]  # + item_stats (default)


def write_recbole_ml100k(grouplens: Path, folder: Path) -> Path:
    """RecBole's ml-100k atomic files from GroupLens' copy, as RecBole made them: u.data and u.user
    under typed headers; u.item's title split at its last "(" into movie_title and release_year
    ("unkonwn" for both when there is none, RecBole's spelling), genres joined by spaces."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + (grouplens / "u.data").read_text())
    users = [line.replace("|", "\t") for line in (grouplens / "u.user").read_text().splitlines()]
    (folder / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n" + "\n".join(users) + "\n")
    items = []
    for line in (grouplens / "u.item").read_text(encoding="latin-1").splitlines():
        p = line.split("|")
        title, cut = p[1].strip(), p[1].strip().rfind("(")
        name, year = (title[:cut].strip(), title[cut + 1:].rstrip(")")) if cut >= 0 else ("unkonwn", "unkonwn")
        genres = " ".join(g for g, flag in zip(ML100K_GENRES, p[5:]) if flag == "1")
        items.append(f"{p[0]}\t{name}\t{year}\t{genres}")
    (folder / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" + "\n".join(items) + "\n",
        encoding="utf-8")
    return folder


def real_recbole_folder() -> Path | None:
    """RecBole's own files: $METAREC_RECBOLE_ML100K (must be them), else the cache's ml-100k if the mirror left them."""
    given = os.environ.get(RECBOLE_ENV)
    if given:
        assert _digests(Path(given)) == RECBOLE_DIGESTS, f"{RECBOLE_ENV}={given} does not hold recbole==1.2.1's ml-100k files"
        return Path(given)
    cached = default_cache_dir() / "ml-100k"
    return cached if _digests(cached) == RECBOLE_DIGESTS else None


def _digests(folder: Path) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in RECBOLE_DIGESTS if (folder / n).is_file()}


def source_of(root: Path, *overrides):
    from metarec.config.compose import compose
    from metarec.run.train import build_source
    # MeLU's 70/10/20 split without heavy users unless asked (COUNTS; data=movielens algo=maml now defaults to the tuned preset's)
    pinned = [p for p in ("data.split=[0.7,0.1,0.2]", "data.heavy_users=false") if not any(o.startswith(p.split("=")[0]) for o in overrides)]
    cfg = compose(["data=movielens", f"data.root={root}", *pinned, *overrides]).data
    return build_source(cfg, torch.device("cpu"), 0, progress=False)


def derived(src) -> dict[str, object]:
    """Everything a run reads from a copy: features, tasks, evaluation batches (item context included),
    floors, model spec, a training episode. Titles and source files are left out: they differ."""
    out = {"fields": src.fields, "genres": src.genres, "cut": src.cut, "mu": src.mu, "x": src.x, "y": src.y,
           "user_role": src.user_role, "pool": src.pool, "pool_mask": src.pool_mask,
           "spec": {k: v for k, v in src.model_spec().items()}}
    for state, t in src.tasks.items():
        out[state] = [t.users, t.support, t.support_mask, t.query, t.query_mask]
        out[f"{state} floors"] = src.floors(state)
    for split in ("val", "test"):
        for state, batch in src.eval_tasks(split).items():
            out[f"{state} batch"] = [batch.support_x, batch.support_y, batch.query_x, batch.query_y]
    episode = src.sample_train(16, torch.Generator().manual_seed(0))
    out["episode"] = [episode.support_x, episode.support_y, episode.support_mask, episode.query_x, episode.query_y]
    return out


def derived_fingerprint(value) -> str:
    """SHA-256 over `derived(...)`: arrays and tensors by dtype, shape and bytes, the rest by repr."""
    digest = hashlib.sha256()

    def add(v):
        if isinstance(v, dict):
            for k in sorted(v):
                digest.update(str(k).encode())
                add(v[k])
        elif isinstance(v, (list, tuple)) and not all(isinstance(e, (str, int, float)) for e in v):
            for e in v:
                add(e)
        elif isinstance(v, (torch.Tensor, np.ndarray)):
            a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
            digest.update(f"{a.dtype}{a.shape}".encode() + np.ascontiguousarray(a).tobytes())
        else:
            digest.update(repr(v).encode())

    add(value)
    return digest.hexdigest()


def assert_same(a: dict, b: dict, path: str = "") -> None:
    """Equal element for element (tensors exactly), so a failure names what differs."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list) and a and not isinstance(a[0], (str, int, float)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), path
    else:
        assert a == b, path


def compare_copies(grouplens: Path, recbole: Path, *overrides) -> tuple:
    ours, theirs = source_of(grouplens, *overrides), source_of(recbole, *overrides)
    a, b = derived(ours), derived(theirs)
    assert_same(a, b)
    assert derived_fingerprint(a) == derived_fingerprint(b)
    return ours, theirs


@pytest.fixture(scope="module")
def recbole_copy(tmp_path_factory):
    return write_recbole_ml100k(ML100K, tmp_path_factory.mktemp("recbole") / "ml-100k")


@needs_ml100k()
def test_the_fixture_is_recboles_copy_byte_for_byte(recbole_copy):
    assert _digests(recbole_copy) == RECBOLE_DIGESTS
    assert fingerprint(sorted(recbole_copy.iterdir())) == RECBOLE_FINGERPRINT


@needs_ml100k()
@pytest.mark.parametrize("overrides", [[], PRESET], ids=["default", "preset"])
def test_grouplens_and_recbole_copies_give_the_same_tasks(recbole_copy, overrides):
    ours, theirs = compare_copies(ML100K, recbole_copy, *overrides)
    assert (ours.fingerprint(), theirs.fingerprint()) == (GROUPLENS_FINGERPRINT, RECBOLE_FINGERPRINT)
    assert np.array_equal(ours.raw.item_year, theirs.raw.item_year)
    if not overrides:
        assert {s: len(t.users) for s, t in ours.tasks.items()} == COUNTS


@needs_ml100k()
@pytest.mark.slow
def test_the_copies_give_the_same_item_factors(recbole_copy):
    compare_copies(ML100K, recbole_copy, *PRESET, "data.item_factors=10")


@needs_ml100k()
def test_real_recbole_files_give_the_same_tasks():
    folder = real_recbole_folder()
    if folder is None:
        pytest.skip(f"RecBole's ml-100k files not found (set {RECBOLE_ENV}, or let the mirror fill the metarec cache)")
    for overrides in ([], PRESET):
        ours, theirs = compare_copies(ML100K, folder, *overrides)
        assert theirs.fingerprint() == RECBOLE_FINGERPRINT
