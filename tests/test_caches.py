"""Cached files are checked when used: a damaged MovieLens download is fetched again (a real HTTP server
on 127.0.0.1), a user's data.root copy is used as it is with one warning, a damaged Omniglot zip is
downloaded again, a damaged decoded cache is rebuilt; nothing ends in a traceback, nothing is lost."""
import hashlib
import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ML100K, needs_ml100k
from test_classic_data import omniglot_dirs  # noqa: F401 - the fixture, generated Omniglot zips
from test_download import server  # noqa: F401 - the fixture, an HTTP server on 127.0.0.1

from metarec.data import cache_check, download, omniglot
from metarec.data.download import Source, locate_movielens
from metarec.data.movielens_io import read_movielens
from metarec.errors import UserError

FILES = ("u.data", "u.user", "u.item")


def release_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in FILES:
            zf.writestr(f"ml-100k/{name}", (ML100K / name).read_bytes())
    return buf.getvalue()


def cut_copy(folder: Path, lines: int) -> Path:
    """The release's three files, u.data cut to its first `lines` lines."""
    folder.mkdir(parents=True)
    for name in FILES:
        (folder / name).write_bytes((ML100K / name).read_bytes())
    (folder / "u.data").write_bytes(b"".join((ML100K / "u.data").read_bytes().splitlines(True)[:lines]))
    return folder


@pytest.fixture
def release_source(server, monkeypatch):  # noqa: F811
    """ml-100k's default source served from 127.0.0.1 (the same files and digests as GroupLens' zip)."""
    body = release_zip()
    url = server.add("/ml-100k.zip", body)
    zip_source = download.DEFAULT_SOURCES["ml-100k"][0]
    monkeypatch.setitem(download.DEFAULT_SOURCES, "ml-100k",
                        [Source("zip", url, sha256=hashlib.sha256(body).hexdigest(), files=zip_source.files)])
    return url


@needs_ml100k()
def test_a_cached_u_data_cut_in_half_is_named_and_fetched_again(tmp_path, server, release_source, caplog):  # noqa: F811
    cached = cut_copy(tmp_path / "cache" / "ml-100k", 50_177)
    assert len(read_movielens(cached).rating) == 50_177  # what a run trained on, silently, before
    with caplog.at_level(logging.WARNING):
        folder = locate_movielens("ml-100k", None, tmp_path / "cache", progress=False)
    assert folder == cached and server.hits["/ml-100k.zip"] == 1
    assert (folder / "u.data").read_bytes() == (ML100K / "u.data").read_bytes()
    assert len(read_movielens(folder).rating) == 100_000
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(cached / "u.data") in w and "fetching ml-100k again" in w for w in warned), warned
    kept = [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".ml-100k-replaced-")]
    assert len(kept) == 1 and len((kept[0] / "ml-100k" / "u.data").read_bytes().splitlines()) == 50_177  # nothing lost
    again = locate_movielens("ml-100k", None, tmp_path / "cache", progress=False)  # now whole: no fetch
    assert again == folder and server.hits["/ml-100k.zip"] == 1


@needs_ml100k()
def test_a_damaged_cache_that_cannot_be_fetched_again_stays_but_is_refused(tmp_path, server, release_source):  # noqa: F811
    cached = cut_copy(tmp_path / "cache" / "ml-100k", 50_177)
    server.routes.clear()  # the source answers 404 now
    with pytest.raises(UserError) as err:  # never used for a run: it would train on half the ratings
        locate_movielens("ml-100k", None, tmp_path / "cache", progress=False)
    line = str(err.value)
    assert "\n" not in line and "u.data" in line and "damaged" in line and "404" in line
    assert "network" in line and "data.root=" in line
    assert len((cached / "u.data").read_bytes().splitlines()) == 50_177  # kept in place: nothing lost
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["ml-100k"]  # nothing left aside


@needs_ml100k()
def test_a_cache_folder_missing_its_files_is_fetched_again(tmp_path, server, release_source):  # noqa: F811
    cached = cut_copy(tmp_path / "cache" / "ml-100k", 10)
    (cached / "u.item").unlink()
    folder = locate_movielens("ml-100k", None, tmp_path / "cache", progress=False)
    assert (folder / "u.data").read_bytes() == (ML100K / "u.data").read_bytes() and (folder / "u.item").is_file()


@needs_ml100k()
def test_a_users_own_copy_differing_from_the_release_is_used_with_one_warning(tmp_path, caplog):
    root = cut_copy(tmp_path / "mine", 50_177)
    with caplog.at_level(logging.WARNING):
        assert locate_movielens("ml-100k", str(root), progress=False) == root
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and str(root / "u.data") in warned[0] and "not the ml-100k release's" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        locate_movielens("ml-100k", str(ML100K), progress=False)  # the release itself: no warning
    assert not caplog.records


def test_data_root_pointing_at_a_file_says_so(tmp_path):
    f = tmp_path / "u.data"
    f.write_text("1\t1\t5\t0\n")
    with pytest.raises(UserError, match=r"is a file, not a folder: point data.root at the folder"):
        locate_movielens("ml-100k", str(f), progress=False)
    with pytest.raises(UserError, match=r"is a file, not a folder"):
        omniglot.find_sources(str(f))


@needs_ml100k()
@pytest.mark.parametrize("name", FILES)
def test_a_zero_byte_file_is_named_not_blamed_on_the_filter(tmp_path, name):
    root = cut_copy(tmp_path / "mine", 100_000)
    (root / name).write_bytes(b"")
    with pytest.raises(UserError, match=rf"{root / name} is empty") as err:
        read_movielens(root)
    assert "loosen" not in str(err.value)


@needs_ml100k()
def test_data_variant_that_does_not_match_the_files_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"holds ml-100k files but data.variant=ml-1m: set data.variant=ml-100k"):
        locate_movielens("ml-1m", str(ML100K), progress=False)


# --- Omniglot ----------------------------------------------------------------------------------


def test_a_truncated_omniglot_zip_in_data_root_is_one_line_naming_it(omniglot_dirs, tmp_path):  # noqa: F811
    _, zips = omniglot_dirs
    cut = tmp_path / "cut"
    cut.mkdir()
    for part in omniglot.PARTS:
        data = (zips / f"{part}.zip").read_bytes()
        (cut / f"{part}.zip").write_bytes(data[: len(data) // 2] if part == "images_evaluation" else data)
    with pytest.raises(UserError, match=r"images_evaluation.zip is damaged") as err:
        omniglot.load_images(str(cut))
    assert "\n" not in str(err.value) and str(cut / "images_evaluation.zip") in str(err.value)


def test_a_damaged_cached_omniglot_zip_is_downloaded_again(omniglot_dirs, tmp_path, monkeypatch, server,  # noqa: F811
                                                            caplog):
    _, zips = omniglot_dirs
    for part in omniglot.PARTS:
        server.add(f"/{part}.zip", (zips / f"{part}.zip").read_bytes())
    monkeypatch.setattr(omniglot, "URL", server.url("/{part}.zip"))
    monkeypatch.setattr(omniglot, "MD5", {p: hashlib.md5((zips / f"{p}.zip").read_bytes()).hexdigest()
                                          for p in omniglot.PARTS})
    first = omniglot.find_sources(None)
    cached = first[1]
    cached.write_bytes(cached.read_bytes()[:1000])  # cut short by a full disk or a copy
    with caplog.at_level(logging.WARNING):
        again = omniglot.find_sources(None)
    assert again == first and cached.read_bytes() == (zips / "images_evaluation.zip").read_bytes()
    assert server.hits["/images_evaluation.zip"] == 2 and server.hits["/images_background.zip"] == 1
    assert any(str(cached) in r.getMessage() and "downloading it again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("damage", ["cut", "flipped", "garbage"])
def test_a_damaged_decoded_cache_is_named_and_rebuilt(omniglot_dirs, damage, caplog):  # noqa: F811
    _, zips = omniglot_dirs
    images, names, meta = omniglot.load_images(str(zips))
    cached = Path(meta["decoded_cache"])
    assert cache_check.stamp_ok(cached)
    data = bytearray(cached.read_bytes())
    if damage == "cut":
        data = data[: len(data) // 2]
    elif damage == "flipped":
        data[len(data) // 2] ^= 0xFF
    else:
        data = bytearray(b"x" * len(data))
    cached.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        again, names_again, _ = omniglot.load_images(str(zips))
    assert np.array_equal(again, images) and names_again == names
    assert any(str(cached) in r.getMessage() and "decoding the zips again" in r.getMessage() for r in caplog.records)
    assert cache_check.stamp_ok(cached)  # rebuilt and stamped again


def test_a_decoded_cache_from_before_stamps_is_checked_by_loading_and_stamped(omniglot_dirs, monkeypatch):  # noqa: F811
    _, zips = omniglot_dirs
    _, _, meta = omniglot.load_images(str(zips))
    cached = Path(meta["decoded_cache"])
    cache_check.stamp_path(cached).unlink()
    monkeypatch.setattr(omniglot, "decode_all", lambda *a: pytest.fail("decoded again"))
    omniglot.load_images(str(zips))
    assert cache_check.stamp_ok(cached)
