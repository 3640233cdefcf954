"""Find MovieLens on disk or fetch it into the cache: data.root, the cache, the GroupLens zip, a mirror.

Also the fetching every data set shares (Omniglot's zips use it too): a download is verified by its
checksum (verify) and reaches its real name with one os.replace (atomic_write for a file, a staged
folder for MovieLens), so the cache never holds a half-written data set; a failure is one line
(one_line) that names what was tried.
"""
from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

from tqdm import tqdm

from metarec import inputs
from metarec.data import cache_check
from metarec.errors import UserError

# What each format is recognised by, and what it needs; used in error messages too.
FORMAT_FILES = {
    "ml-100k": ["u.data", "u.user", "u.item"],
    "ml-1m": ["ratings.dat", "users.dat", "movies.dat"],
    "atomic": ["NAME.inter", "NAME.user (optional)", "NAME.item (optional)"],
}
EXPECTED_HINT = (
    "expected ml-100k (u.data, u.user, u.item), ml-1m (ratings.dat, users.dat, movies.dat) "
    "or RecBole atomic files (one NAME.inter, optional NAME.user, NAME.item)"
)


def detect_format(folder: str | Path) -> str | None:
    """'ml-100k', 'ml-1m' or 'atomic' when `folder` holds that format's files, else None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    # exists(), not is_file(): a FIFO or a device under a data file's name is refused by name when read
    if all((folder / f).exists() for f in FORMAT_FILES["ml-100k"]):
        return "ml-100k"
    if all((folder / f).exists() for f in FORMAT_FILES["ml-1m"]):
        return "ml-1m"
    if len(list(folder.glob("*.inter"))) == 1:
        return "atomic"
    return None


CACHE_ENV = "METAREC_CACHE"
log = logging.getLogger(__name__)
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Source:
    """One place a data set can come from.

    kind "zip": `url` is the zip's address (http(s):// or file://), `sha256` the zip's digest; `files`
    maps the names of the files it holds to their digests, `lines` to their line counts (where known),
    against which a cached copy is checked each time it is used.
    kind "wheel": `url` is what `pip download` gets (a requirement such as "recbole==1.2.1", or a
    wheel's path or address); `files` maps each member path in the wheel to its digest.
    """
    kind: str
    url: str
    sha256: str = ""
    files: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.url} ({'pip download' if self.kind == 'wheel' else self.kind})"


_RECBOLE_ML100K = "recbole/dataset_example/ml-100k/"
DEFAULT_SOURCES: dict[str, list[Source]] = {
    "ml-100k": [
        Source("zip", "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
               sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229", files={
                   "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
                   "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
                   "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701"}),
        # The mirror: RecBole's wheel ships ml-100k as atomic files (.inter body == u.data).
        Source("wheel", "recbole==1.2.1", files={
            _RECBOLE_ML100K + "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
            _RECBOLE_ML100K + "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
            _RECBOLE_ML100K + "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
        }),
    ],
    "ml-1m": [
        Source("zip", "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
               sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20", files={
                   "users.dat": "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3",
                   "movies.dat": "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9"},
               lines={"ratings.dat": 1_000_209}),  # GroupLens' README: 1,000,209 ratings
    ],
}


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "metarec").expanduser()


def checked_cache(cache: Path) -> Path:
    """`cache`, unless it (or the nearest existing folder above it) is a file: then one line saying so."""
    existing = cache
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"the cache folder {cache} cannot be made: {existing} is a file, not a folder; set "
                        f"{CACHE_ENV} (or data.cache_dir) to a folder")
    return cache


def locate_movielens(variant: str, root: str | Path | None, cache_dir: str | Path | None = None, *,
                     sources: list[Source | dict] | None = None, timeout: float = 10.0,
                     progress: bool = True) -> Path:
    """A folder that read_movielens can read: `root` if given, else the cache, else a download.

    A given `root` is final: if it is unusable that is an error, never a silent download.
    """
    if root is not None and str(root) != "":
        folder = Path(root).expanduser()
        if folder.exists() and not folder.is_dir():
            raise UserError(f"data.root={folder} is {inputs.kind_of(folder.stat().st_mode)}, not a folder: point "
                            f"data.root at the folder that holds the {variant} files ({EXPECTED_HINT})")
        if not folder.is_dir():
            raise UserError(f"data.root={folder} does not exist: fix the path, or leave data.root unset to download {variant}")
        if detect_format(folder) is None:
            raise UserError(f"data.root={folder} holds no MovieLens data ({EXPECTED_HINT}): fix the path")
        if detect_format(folder) in DEFAULT_SOURCES and detect_format(folder) != variant:
            raise UserError(f"data.root={folder} holds {detect_format(folder)} files but data.variant={variant}: set "
                            f"data.variant={detect_format(folder)} (its cut year and presets), or point data.root "
                            f"at a copy of {variant}")
        for name in _damaged(variant, folder, None, lines=False):  # the user's copy: used as it is
            log.warning("data.root: %s is not the %s release's file (its SHA-256 differs): using it as it is; the "
                        "run's data fingerprint records this copy", folder / name, variant)
        return folder

    cache = checked_cache(Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir())
    target = cache / variant
    aside, bad = None, []
    if detect_format(target) is not None:
        bad = _damaged(variant, target, sources)
        if not bad:
            return target
        aside = _set_aside(target, [str(target / n) for n in bad])
    elif target.exists():  # a folder without the data set's files (some deleted): fetched again too
        aside = _set_aside(target, [f"{target} (it lacks the {variant} files)"])
    try:
        found = _fetch_variant(variant, cache, target, sources, timeout, progress)
    except UserError as e:
        if aside is None or detect_format(aside) is None:
            raise
        os.replace(aside, target)  # what there was, back in place (nothing is lost), but never used for a run
        aside.parent.rmdir()
        tried = str(e).split("; tried ", 1)[-1].split(". Download it yourself", 1)[0]
        raise UserError(f"the cached {variant} in {target} is damaged ({', '.join(bad)} "
                        f"{'differs' if len(bad) == 1 else 'differ'} from the release: cut short or changed) and "
                        f"fetching it again failed (tried {tried}): "
                        f"nothing was run on it; connect to the network and run again, or set "
                        f"data.root=/path/to/{variant} (a copy of your own is used as it is)") from None
    if aside is not None:  # never deleted: a copy put into the cache by hand looks the same
        log.warning("the previous %s is kept in %s: delete it when it is not needed", target, aside.parent)
    return found


def _damaged(variant: str, folder: Path, sources, lines: bool = True) -> list[str]:
    """The files in `folder` that are not what their sources say they are: their digests (and, with
    `lines`, line counts); the default sources of `variant` when `sources` is None."""
    given = DEFAULT_SOURCES.get(variant, []) if sources is None else sources
    given = [s if isinstance(s, Source) else Source(**s) for s in given]
    return cache_check.differing(folder, {Path(m).name: d for s in given for m, d in s.files.items()},
                                 {n: c for s in given for n, c in s.lines.items()} if lines else None)


def _set_aside(target: Path, bad: list[str]) -> Path:
    """Move a damaged cache folder out of the way (beside it, hidden) before fetching it again."""
    log.warning("the cached %s is not the release's file (checksum or length differs: cut short or "
                "changed): fetching %s again", ", ".join(bad), target.name)
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}-replaced-", dir=target.parent))
    os.replace(target, aside / target.name)
    return aside / target.name


def _fetch_variant(variant: str, cache: Path, target: Path, sources, timeout: float, progress: bool) -> Path:
    """Fetch `variant` into the cache from the first source that works (every failure is named)."""
    if sources is None:
        if variant not in DEFAULT_SOURCES:
            raise UserError(
                f"no download known for data set {variant!r} (known: {', '.join(DEFAULT_SOURCES)}): "
                f"set data.root=/path/to/{variant}"
            )
        sources = DEFAULT_SOURCES[variant]
    sources = [s if isinstance(s, Source) else Source(**s) for s in sources]

    failures = []
    for source in sources:
        try:
            _fetch_into_cache(source, cache, target, timeout=timeout, progress=progress)
        except Exception as e:  # any failure: note it and try the next source
            failures.append(f"{source.describe()}: {one_line(e)}")
            log.warning("could not get %s from %s", variant, failures[-1])
            continue
        if detect_format(target) is not None:
            return target
        failures.append(f"{source.describe()}: the files fetched are not a MovieLens folder")
    raise UserError(
        f"could not get {variant}; tried {'; '.join(failures) or 'no sources'}. "
        f"Download it yourself and set data.root=/path/to/{variant}, or set {CACHE_ENV} to a folder that holds {variant}/"
    )


# ----------------------------------------------------------------------------- fetching

def one_line(e: BaseException) -> str:
    """An error as one short line, for a message that names every source tried."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) < 300 else text[:300] + "..."


def fetch_file(url: str, dest: Path, digest: str, *, algo: str = "sha256", timeout: float = 10.0,
               progress: bool = True) -> Path:
    """Download `url` to `dest`, checked against `digest`; only a verified file gets its real name."""
    with atomic_write(dest) as out:
        _download(url, out, timeout=timeout, progress=progress)
        out.flush()
        verify(Path(out.name), digest, algo)
    return dest


@contextmanager
def atomic_write(dest: Path) -> Iterator[BinaryIO]:
    """A binary file to write that appears at `dest`, with the umask's permissions, only when the block
    ends without error: written beside it under a hidden temp name, synced, then one os.replace."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    try:
        with open(tmp, "wb") as out:  # opened by name, so out.name is the temp file's path
            yield out
            out.flush()
            os.fsync(out.fileno())
        umask = os.umask(0)  # mkstemp makes the file 0600; give it what an ordinary open would
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def verify(path: Path, expected: str, algo: str = "sha256", what: str = "") -> None:
    """Raise ValueError unless the file's `algo` digest (sha256, md5) is `expected`; `what` names it."""
    digest = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected.lower():
        name = {"sha256": "SHA-256", "md5": "MD5"}.get(algo, algo)
        raise ValueError(f"checksum mismatch{' for ' + what if what else ''} "
                         f"(got {name} {actual[:12]}..., expected {expected[:12]}...)")


def _fetch_into_cache(source: Source, cache: Path, target: Path, *, timeout: float, progress: bool) -> None:
    """Fetch `source`, verify it, and move the result to `target` in one step; clean up on failure."""
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-tmp-", dir=cache))  # same filesystem as target
    try:
        staged = work / "staged"
        staged.mkdir()
        if source.kind == "zip":
            _fetch_zip(source, work, staged, timeout=timeout, progress=progress)
        elif source.kind == "wheel":
            _fetch_wheel(source, work, staged, timeout=timeout)
        else:
            raise ValueError(f"unknown source kind {source.kind!r} (expected 'zip' or 'wheel')")
        folder = _data_folder(staged)
        try:
            os.replace(folder, target)
        except OSError:
            if detect_format(target) is None:  # not a concurrent run that got there first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fetch_zip(source: Source, work: Path, staged: Path, *, timeout: float, progress: bool) -> None:
    archive = fetch_file(source.url, work / "download.zip", source.sha256, timeout=timeout, progress=progress)
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            dest = (staged / member.filename).resolve()
            if not dest.is_relative_to(staged.resolve()):
                raise ValueError(f"unsafe path in zip: {member.filename}")
        zf.extractall(staged)


def _download(url: str, out: BinaryIO, *, timeout: float, progress: bool) -> None:
    """Stream `url` into `out`; a response shorter than its Content-Length is an error."""
    request = urllib.request.Request(url, headers={"User-Agent": "metarec"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        done = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {url.rsplit('/', 1)[-1]}",
                  disable=not progress, leave=False) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                done += len(chunk)
                bar.update(len(chunk))
    if total is not None and done != total:
        raise ValueError(f"download cut short ({done} of {total} bytes)")


def _fetch_wheel(source: Source, work: Path, staged: Path, *, timeout: float) -> None:
    wheels = work / "wheels"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
           "--disable-pip-version-check", "--quiet", "--timeout", str(timeout), "--retries", "1",
           "-d", str(wheels), source.url]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(60.0, 12 * timeout))
    except subprocess.TimeoutExpired:
        raise ValueError("pip download timed out") from None
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        raise ValueError(f"pip download failed: {lines[-1] if lines else 'exit code ' + str(done.returncode)}")
    found = sorted(wheels.glob("*.whl"))
    if len(found) != 1:
        raise ValueError(f"pip download left {len(found)} wheels, expected 1")
    with zipfile.ZipFile(found[0]) as zf:
        names = set(zf.namelist())
        for member, expected in source.files.items():
            if member not in names:
                raise ValueError(f"{member} is not in {found[0].name}")
            dest = staged / Path(member).name
            dest.write_bytes(zf.read(member))
            verify(dest, expected, what=member)


def _data_folder(staged: Path) -> Path:
    """The folder inside an extracted archive that holds the data (zips wrap it in ml-100k/)."""
    if detect_format(staged) is not None:
        return staged
    subfolders = [p for p in staged.iterdir() if p.is_dir() and not p.name.startswith("__MACOSX")]
    for sub in subfolders:
        if detect_format(sub) is not None:
            return sub
    raise ValueError(f"the archive holds no MovieLens data ({EXPECTED_HINT})")

