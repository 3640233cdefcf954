"""Acquisition chain against a real HTTP server on 127.0.0.1: cache, checksums, nothing half-written."""
import hashlib
import io
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from metarec.data.cache_check import fingerprint
from metarec.data.download import DEFAULT_SOURCES, Source, atomic_write, fetch_file, locate_movielens, verify
from metarec.data.movielens_io import read_movielens
from metarec.errors import UserError

FLAGS = "|".join(["0"] * 19)
ML100K_FILES = {
    "u.data": b"1\t1\t5\t881250949\n2\t2\t3\t891717742\n1\t2\t4\t878887116\n",
    "u.user": b"1|24|M|technician|85711\n2|53|F|other|94043\n",
    "u.item": f"1|Toy Story (1995)|01-Jan-1995||http://x|{FLAGS}\n2|Misérables, Les (1995)|01-Jan-1995||http://y|{FLAGS}\n"
              .encode("latin-1"),
}


def make_zip(files: dict[str, bytes], top: str = "ml-100k/") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(top + name, data)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server:
    """Serves `routes[path] = (body, content_length)`; counts requests per path."""

    def __init__(self):
        self.routes: dict[str, tuple[bytes, int]] = {}
        self.hits: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                if self.path not in server.routes:
                    self.send_error(404)
                    return
                body, length = server.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def add(self, path: str, body: bytes, length: int | None = None) -> str:
        self.routes[path] = (body, len(body) if length is None else length)
        return self.url(path)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/ml-100k.zip"


def assert_cache_clean(cache: Path) -> None:
    """No data set entry and no leftover temp files or folders."""
    assert not cache.exists() or list(cache.iterdir()) == []


# The local server answers at once or refuses at once: the timeout only bounds a hang, so it is long enough
# that a loaded machine never trips it (no test waits for it to expire).
TIMEOUT = 30.0


def locate(cache: Path, sources, root=None, variant="ml-100k") -> Path:
    return locate_movielens(variant, root, cache, sources=sources, timeout=TIMEOUT, progress=False)


# ----------------------------------------------------------------------------- zip sources

def test_good_zip_fills_cache_and_second_call_uses_it(server, tmp_path):
    body = make_zip(ML100K_FILES)
    url = server.add("/ml-100k.zip", body)
    cache = tmp_path / "cache"
    folder = locate(cache, [Source("zip", url, sha256=sha(body))])
    assert folder == cache / "ml-100k"
    assert sorted(p.name for p in cache.iterdir()) == ["ml-100k"]  # no temp leftovers
    raw = read_movielens(folder)
    assert len(raw.rating) == 3 and raw.item_title[1] == "Misérables, Les (1995)"

    again = locate(cache, [Source("zip", url, sha256=sha(body))])
    assert again == folder and server.hits["/ml-100k.zip"] == 1


def test_sources_may_be_dicts_and_zip_without_top_folder(server, tmp_path):
    body = make_zip(ML100K_FILES, top="")
    url = server.add("/flat.zip", body)
    folder = locate(tmp_path, [{"kind": "zip", "url": url, "sha256": sha(body)}])
    assert (folder / "u.data").read_bytes() == ML100K_FILES["u.data"]


def test_wrong_checksum_leaves_nothing(server, tmp_path):
    url = server.add("/ml-100k.zip", make_zip(ML100K_FILES))
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="checksum mismatch") as info:
        locate(cache, [Source("zip", url, sha256="0" * 64)])
    assert url in str(info.value) and "data.root=" in str(info.value)
    assert_cache_clean(cache)


def test_truncated_download_leaves_nothing(server, tmp_path):
    body = make_zip(ML100K_FILES)
    url = server.add("/ml-100k.zip", body[: len(body) // 2], length=len(body))  # promises more than it sends
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=r"could not get ml-100k"):
        locate(cache, [Source("zip", url, sha256=sha(body))])
    assert_cache_clean(cache)


def test_cut_zip_with_matching_checksum_leaves_nothing(server, tmp_path):
    cut = make_zip(ML100K_FILES)[:150]  # checksum passes, the archive is broken
    url = server.add("/cut.zip", cut)
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="could not get ml-100k"):
        locate(cache, [Source("zip", url, sha256=sha(cut))])
    assert_cache_clean(cache)


def test_zip_without_movielens_files(server, tmp_path):
    body = make_zip({"README": b"nothing here"})
    url = server.add("/other.zip", body)
    with pytest.raises(UserError, match="no MovieLens data"):
        locate(tmp_path / "cache", [Source("zip", url, sha256=sha(body))])
    assert_cache_clean(tmp_path / "cache")


def test_every_failed_source_is_named_in_one_line(server, tmp_path):
    dead = closed_port_url()
    missing = server.url("/missing.zip")
    body = make_zip(ML100K_FILES)
    bad = server.add("/bad.zip", body)
    sources = [Source("zip", dead, sha256=sha(body)), Source("zip", missing, sha256=sha(body)),
               Source("zip", bad, sha256="f" * 64)]
    with pytest.raises(UserError) as info:
        locate(tmp_path / "cache", sources)
    msg = str(info.value)
    assert "\n" not in msg
    assert dead in msg and "refused" in msg.lower()
    assert missing in msg and "404" in msg
    assert bad in msg and "checksum" in msg
    assert "data.root=" in msg
    assert_cache_clean(tmp_path / "cache")


def test_falls_through_to_the_next_source(server, tmp_path):
    body = make_zip(ML100K_FILES)
    good = server.add("/good.zip", body)
    folder = locate(tmp_path / "cache", [Source("zip", closed_port_url(), sha256=sha(body)),
                                         Source("zip", good, sha256=sha(body))])
    assert len(read_movielens(folder).rating) == 3


# ----------------------------------------------------------------------------- root and cache

def test_root_is_final_even_when_missing(server, tmp_path):
    url = server.add("/ml-100k.zip", make_zip(ML100K_FILES))
    with pytest.raises(UserError, match="does not exist"):
        locate(tmp_path / "cache", [Source("zip", url, sha256="0" * 64)], root=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no MovieLens data"):
        locate(tmp_path / "cache", [Source("zip", url, sha256="0" * 64)], root=tmp_path / "empty")
    assert server.hits == {}


def test_root_given_is_returned(tmp_path):
    for name, data in ML100K_FILES.items():
        (tmp_path / name).write_bytes(data)
    assert locate(tmp_path / "cache", [], root=str(tmp_path)) == tmp_path


def test_cache_from_environment(tmp_path, monkeypatch):
    entry = tmp_path / "envcache" / "ml-100k"
    entry.mkdir(parents=True)
    for name, data in ML100K_FILES.items():
        (entry / name).write_bytes(data)
    monkeypatch.setenv("METAREC_CACHE", str(tmp_path / "envcache"))
    assert locate_movielens("ml-100k", None, sources=[], progress=False) == entry


def test_unknown_variant_without_sources(tmp_path):
    with pytest.raises(UserError, match="no download known for data set 'ml-20m'"):
        locate_movielens("ml-20m", None, tmp_path, progress=False)


# ----------------------------------------------------------------------------- wheel mirror

def make_wheel(folder: Path, members: dict[str, bytes]) -> Path:
    """A minimal wheel that `pip download` accepts from a local path."""
    path = folder / "fakerec-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("fakerec-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: fakerec\nVersion: 1.0\n")
        zf.writestr("fakerec-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("fakerec-1.0.dist-info/RECORD", "")
    return path


ATOMIC = {
    "fakerec/data/toy.inter": b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t5\t10\n",
    "fakerec/data/toy.user": b"user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n1\t24\tM\tother\t85711\n",
    "fakerec/data/toy.item": b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n1\tToy Story\t1995\tComedy\n",
}


def test_wheel_source_from_local_wheel(tmp_path):
    wheel = make_wheel(tmp_path, ATOMIC)
    cache = tmp_path / "cache"
    folder = locate(cache, [Source("wheel", str(wheel), files={k: sha(v) for k, v in ATOMIC.items()})])
    assert sorted(p.name for p in folder.iterdir()) == ["toy.inter", "toy.item", "toy.user"]
    assert read_movielens(folder).item_title == ["Toy Story"]
    assert sorted(p.name for p in cache.iterdir()) == ["ml-100k"]

    bad = {k: sha(v) for k, v in ATOMIC.items()} | {"fakerec/data/toy.item": "0" * 64}
    with pytest.raises(UserError, match=r"checksum mismatch for fakerec/data/toy\.item"):
        locate(tmp_path / "cache2", [Source("wheel", str(wheel), files=bad)])
    assert_cache_clean(tmp_path / "cache2")


def test_default_sources_pin_hashes():
    zip_src, wheel_src = DEFAULT_SOURCES["ml-100k"]
    assert zip_src.url.endswith("/ml-100k.zip") and len(zip_src.sha256) == 64
    assert wheel_src.url == "recbole==1.2.1"
    assert sorted(Path(m).name for m in wheel_src.files) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert [s.kind for s in DEFAULT_SOURCES["ml-1m"]] == ["zip"]


@pytest.mark.slow
def test_real_recbole_mirror(tmp_path):
    """The real mirror (needs the package index): ml-100k from the recbole 1.2.1 wheel."""
    try:
        folder = locate(tmp_path / "cache", [DEFAULT_SOURCES["ml-100k"][1]])
    except UserError as e:
        if "pip download" in str(e):
            pytest.skip(f"pip download of recbole==1.2.1 failed (no network?): {e}")
        raise
    raw = read_movielens(folder)
    assert (len(raw.rating), raw.num_users, raw.num_items) == (100_000, 943, 1_682)


# ----------------------------------------------------------------------------- fingerprint

def test_fingerprint_ignores_location_and_order_but_not_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        for name, data in ML100K_FILES.items():
            (d / name).write_bytes(data)
    fa = fingerprint([a / "u.data", a / "u.user", a / "u.item"])
    assert len(fa) == 64
    assert fa == fingerprint([b / "u.item", b / "u.data", b / "u.user"])
    (b / "u.data").write_bytes(ML100K_FILES["u.data"] + b"3\t1\t1\t1\n")
    assert fa != fingerprint([b / "u.item", b / "u.data", b / "u.user"])


# ----------------------------------------------------------------------------- the shared machinery

def test_fetch_file_verifies_and_writes_atomically(server, tmp_path):
    """What Omniglot's zips use: one checksum check (sha256 or md5), one os.replace, nothing half-written."""
    body = b"some bytes"
    url = server.add("/part.zip", body)
    dest = tmp_path / "cache" / "part.zip"
    with pytest.raises(ValueError, match=r"checksum mismatch \(got MD5 "):
        fetch_file(url, dest, "0" * 32, algo="md5", timeout=TIMEOUT, progress=False)
    assert list(dest.parent.iterdir()) == []
    assert fetch_file(url, dest, hashlib.md5(body).hexdigest(), algo="md5", timeout=TIMEOUT, progress=False) == dest
    assert dest.read_bytes() == body and list(dest.parent.iterdir()) == [dest]
    verify(dest, sha(body))
    with pytest.raises(RuntimeError, match="stop"), atomic_write(tmp_path / "cache" / "other.bin") as out:
        out.write(b"half")
        raise RuntimeError("stop")
    assert list(dest.parent.iterdir()) == [dest]
