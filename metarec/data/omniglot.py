"""Omniglot N-way K-shot tasks (MAML's protocol): the official zips decoded once to a cached tensor.

Characters are sorted by (part, alphabet, character), background before evaluation: 1,623 of
them, 20 drawers each. A permutation of all characters seeded with SPLIT_SEED (as MAML shuffles
them before taking 1,200 for meta-training) gives, in order: meta-train, validation (the last
`val_classes` of the first `train_classes`), test (the rest). With `rotations`, each character
rotated by 0/90/180/270 degrees is its own class, in every split.
"""
from __future__ import annotations

import hashlib
import io
import logging
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from metarec import inputs, progress
from metarec.checks import Related, ordered, rule
from metarec.data import cache_check
from metarec.data.download import atomic_write, checked_cache, default_cache_dir, fetch_file, one_line, verify
from metarec.errors import UserError
from metarec.tasks import TaskBatch, TaskSource

log = logging.getLogger(__name__)

PARTS = ("images_background", "images_evaluation")
URL = "https://github.com/brendenlake/omniglot/raw/master/python/{part}.zip"
MD5 = {"images_background": "68d2efa1b9178cc56df9314c21c6e718",
       "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811"}
SPLIT_SEED = 0  # fixes which characters are meta-train / val / test, for every run
DECODE_VERSION = "box-invert-v1"  # part of the decoded cache's key: bump when decoding changes
_SPLIT_OFFSET = {"val": 1, "test": 2}


@dataclass
class OmniglotConfig(Related):
    name: str = "omniglot"
    root: Optional[str] = None  # folder with images_background(.zip) and images_evaluation(.zip)
    ways: int = rule(5, ">= 2")  # N classes per task
    shots: int = rule(1, ">= 1")  # K support images per class
    query_size: int = rule(15, ">= 1")  # query images per class
    image_size: int = rule(28, ">= 1")  # images are resized to image_size x image_size
    train_classes: int = rule(1200, "in [2, 1622]")  # characters for meta-training (validation included); the rest (of 1,623) test
    val_classes: int = rule(100, ">= 1")  # validation characters, carved from the train_classes
    rotations: bool = True  # 90-degree rotations as new classes (4x the classes)
    n_val_tasks: int = rule(200, ">= 1")  # fixed validation tasks
    n_test_tasks: int = rule(600, ">= 1")  # fixed test tasks
    eval_seed: int = rule(0, ">= 0")  # fixes the val/test tasks, identical across runs

    @staticmethod
    def relations(c, prefix: str) -> list[str]:
        """Validation characters are carved from the meta-train ones; a task draws its images from one
        character's 20 drawers."""
        lines = ordered(c, prefix, ("val_classes", "<", "train_classes"))
        if c.shots + c.query_size > 20:
            lines.append(f"{prefix}.shots={c.shots} and {prefix}.query_size={c.query_size}: their sum must be <= 20, "
                         f"the drawers of each Omniglot character")
        return lines


def cache_dir() -> Path:
    return checked_cache(default_cache_dir() / "omniglot")  # $METAREC_CACHE or ~/.cache/metarec, as for MovieLens


def _part_path(folder: Path, part: str) -> Optional[Path]:
    if (folder / f"{part}.zip").exists():  # a FIFO or a device under the name is refused by name
        return inputs.regular_file(folder / f"{part}.zip", "Omniglot zip", "point data.root at the folder holding "
                                   "the official images_background.zip and images_evaluation.zip")
    if (folder / part).is_dir():
        return folder / part
    return None


def _download(part: str, folder: Path, timeout: float = 10.0) -> Path:
    """Fetch one official zip into `folder`, MD5-checked; only a verified file gets its real name."""
    return fetch_file(URL.format(part=part), folder / f"{part}.zip", MD5[part], algo="md5", timeout=timeout)


def find_sources(root: Optional[str]) -> list[Path]:
    """The two parts (zip or extracted folder): from data.root, else the cache, else downloaded."""
    if root is not None:
        folder = Path(root).expanduser()
        if folder.exists():  # a file, a FIFO or a device is named; a missing folder is named below
            inputs.folder(folder, "data.root", "point data.root at the folder holding images_background.zip and "
                          "images_evaluation.zip")
        found = [_part_path(folder, part) for part in PARTS]
        missing = [part for part, path in zip(PARTS, found) if path is None]
        if missing:
            raise UserError(f"data.root={folder} has no {' or '.join(missing)} (.zip or folder): "
                            "point data.root at the folder holding images_background.zip and images_evaluation.zip")
        return found
    folder, sources = cache_dir(), []
    for part in PARTS:
        path = _part_path(folder, part)
        if path is not None and path.is_file() and not _md5_ok(path, part):
            log.warning("the cached %s is damaged (its MD5 is not the official zip's): downloading it again", path)
            path.unlink()
            path = None
        if path is None:
            try:
                path = _download(part, folder)
            except Exception as err:  # network, disk, checksum: all end the same way for the user
                raise UserError(f"could not get Omniglot {part}: not in data.root (unset), not in the cache {folder}, "
                                f"download {URL.format(part=part)} failed ({one_line(err)}); "
                                "get the zips from github.com/brendenlake/omniglot and set data.root=FOLDER") from None
        sources.append(path)
    return sources


def _md5_ok(path: Path, part: str) -> bool:
    try:
        verify(path, MD5[part], "md5")
    except ValueError:
        return False
    return True


def _fingerprint(sources: list[Path], image_size: int) -> str:
    h = hashlib.sha256(f"{DECODE_VERSION} {image_size}".encode())
    for src in sources:
        if src.is_file():
            with open(src, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
        else:  # an extracted folder: its file names and sizes stand for its content
            for p in sorted(src.rglob("*.png")):
                h.update(f"{p.relative_to(src)} {p.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def _character_files(src: Path) -> dict[tuple[str, ...], list]:
    """(part, alphabet, character) -> the character's PNGs (zip member names or paths), sorted."""
    chars: dict[tuple[str, ...], list] = {}
    if src.is_file():
        with zipfile.ZipFile(src) as zf:
            names = [n for n in zf.namelist() if n.endswith(".png")]
        for name in names:
            parts = name.split("/")
            if len(parts) >= 4:
                chars.setdefault(tuple(parts[-4:-1]), []).append(name)
    else:
        for p in src.rglob("*.png"):
            rel = p.relative_to(src.parent).parts
            if len(rel) >= 4:
                chars.setdefault(tuple(rel[-4:-1]), []).append(p)
    return {key: sorted(files, key=str) for key, files in chars.items()}


def _decode(png: bytes, size: int) -> np.ndarray:
    image = Image.open(io.BytesIO(png)).convert("L").resize((size, size), Image.Resampling.BOX)
    return 255 - np.asarray(image, dtype=np.uint8)  # strokes 255, background 0


def decode_all(sources: list[Path], image_size: int) -> tuple[np.ndarray, list[str]]:
    """Every image as uint8 [characters, drawers, size, size] and the characters' names. A damaged zip
    or image is one line naming the file (a zip cut short, a PNG that does not decode)."""
    images, names = [], []
    for src in sources:
        try:
            chars = _character_files(src)
            zf = zipfile.ZipFile(src) if src.is_file() else None
            try:
                read = zf.read if zf else Path.read_bytes
                for key in progress.bar(sorted(chars), desc=f"decode {src.name}", unit="character"):
                    images.append(np.stack([_decode(read(f), image_size) for f in chars[key]]))
                    names.append("/".join(key))
            finally:
                if zf:
                    zf.close()
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, Image.UnidentifiedImageError) as err:
            raise UserError(f"{src} is damaged ({one_line(err)}): replace it with the official "
                            f"{src.name if src.suffix == '.zip' else src.name + '.zip'} "
                            "(github.com/brendenlake/omniglot), or delete it to download it again") from None
    if not images:
        raise UserError(f"no Omniglot PNGs found in {', '.join(map(str, sources))}: expected PART/ALPHABET/CHARACTER/*.png")
    counts = {len(a) for a in images}
    if len(counts) != 1:
        raise UserError(f"Omniglot characters have different numbers of drawers ({sorted(counts)}): the data is incomplete")
    return np.stack(images), names


def load_images(root: Optional[str], image_size: int = 28) -> tuple[np.ndarray, list[str], dict]:
    """Decoded images and names, from the decoded cache when it matches the sources' fingerprint."""
    sources = find_sources(root)
    key = _fingerprint(sources, image_size)
    cached = cache_dir() / f"decoded-{key}.npz"
    meta = {"sources": [str(s) for s in sources], "fingerprint": key, "decoded_cache": str(cached)}
    found = _read_decoded(cached) if cached.is_file() else None
    if found is not None:
        return (*found, meta)
    start = time.perf_counter()
    images, names = decode_all(sources, image_size)
    log.info("decoded %d Omniglot images in %.1f s", images.shape[0] * images.shape[1], time.perf_counter() - start)
    try:
        with atomic_write(cached) as f:
            np.savez(f, images=images, names=np.array(names))
        cache_check.write_stamp(cached)  # its size and hash, checked whenever it is read
    except OSError as err:  # a read-only cache only costs the next run a decode
        log.warning("could not write the decoded Omniglot cache %s: %s", cached, err)
    return images, names, meta


def _read_decoded(cached: Path) -> tuple[np.ndarray, list[str]] | None:
    """The decoded cache, if it is whole: it matches its stamp (a cache written before stamps: it loads);
    else a warning naming it, and None (the caller decodes again and rewrites it)."""
    stamped = cache_check.stamp_path(cached).is_file()
    if not stamped or cache_check.stamp_ok(cached):
        try:
            with np.load(cached, allow_pickle=False) as z:
                images, names = z["images"], [str(n) for n in z["names"]]
            if images.ndim == 4 and len(names) == images.shape[0]:
                if not stamped:
                    _try(cache_check.write_stamp, cached)  # a cache from before stamps, whole: stamp it now
                return images, names
        except Exception:  # noqa: BLE001 - a cut or garbled npz fails in many ways: all mean "decode again"
            pass
    log.warning("the decoded Omniglot cache %s is damaged (cut short or changed): decoding the zips again", cached)
    return None


def _try(fn, *args) -> None:
    try:
        fn(*args)
    except OSError:  # a read-only cache: checked by loading it, each time
        pass


class OmniglotTasks(TaskSource):
    """TaskSource for N-way K-shot Omniglot; all images live on `device` as uint8."""

    kind = "classification"

    def __init__(self, cfg: OmniglotConfig, device: torch.device | str = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        images, names, self.meta = load_images(cfg.root, cfg.image_size)
        n_chars, self.drawers = images.shape[:2]
        if not 0 <= cfg.val_classes < cfg.train_classes < n_chars:
            raise UserError(f"need 0 <= data.val_classes < data.train_classes < {n_chars} characters, "
                            f"got {cfg.val_classes} and {cfg.train_classes}")
        if cfg.shots + cfg.query_size > self.drawers:
            raise UserError(f"data.shots + data.query_size = {cfg.shots + cfg.query_size} exceeds the "
                            f"{self.drawers} images per character")
        order = torch.randperm(n_chars, generator=torch.Generator().manual_seed(SPLIT_SEED))
        n_train = cfg.train_classes - cfg.val_classes
        chars = {"train": order[:n_train], "val": order[n_train:cfg.train_classes], "test": order[cfg.train_classes:]}
        self.n_rot = 4 if cfg.rotations else 1
        pixels = torch.from_numpy(images).reshape(n_chars, self.drawers, -1)  # [chars, drawers, size*size]
        self.images = {s: pixels[c].to(self.device) for s, c in chars.items()}
        self.names = {s: [names[i] for i in c.tolist()] for s, c in chars.items()}
        for split, imgs in self.images.items():
            if imgs.shape[0] * self.n_rot < cfg.ways:
                raise UserError(f"the {split} split has {imgs.shape[0] * self.n_rot} classes, fewer than data.ways={cfg.ways}")
        size = cfg.image_size
        grid = torch.arange(size * size).reshape(size, size)
        # rot_index[k][p] = the source pixel of output pixel p under a k*90-degree rotation
        self.rot_index = torch.stack([torch.rot90(grid, k).reshape(-1) for k in range(4)]).to(self.device)
        self._eval: dict[str, TaskBatch] = {}

    def _draw(self, split: str, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        c, images = self.cfg, self.images[split]
        n_classes, per_class = images.shape[0] * self.n_rot, c.shots + c.query_size
        # A random order of all classes; its first `ways` are the task's classes, and a class's slot
        # is its label, so labels are already shuffled per task.
        classes = torch.rand(n_tasks, n_classes, generator=generator).argsort(dim=1)[:, :c.ways]  # [tasks, ways]
        drawers = torch.rand(n_tasks, c.ways, self.drawers, generator=generator).argsort(dim=-1)[..., :per_class]
        classes, drawers = classes.to(self.device), drawers.to(self.device)  # drawers [tasks, ways, per_class]
        char, rot = classes // self.n_rot, classes % self.n_rot
        pix = images[char.unsqueeze(-1), drawers]  # [tasks, ways, per_class, size*size] uint8
        pix = pix.gather(-1, self.rot_index[rot].unsqueeze(2).expand_as(pix))
        size = c.image_size
        x = pix.to(torch.float32).div_(255).reshape(n_tasks, c.ways, per_class, 1, size, size)
        labels = torch.arange(c.ways, device=self.device).reshape(1, -1, 1)

        def flat(part: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            y = labels.expand(n_tasks, -1, k).reshape(n_tasks, -1)  # [tasks, ways*k], class-major
            mask = torch.ones(n_tasks, c.ways * k, dtype=torch.float32, device=self.device)
            return part.reshape(n_tasks, c.ways * k, 1, size, size), y, mask

        return TaskBatch(*flat(x[:, :, :c.shots], c.shots), *flat(x[:, :, c.shots:], c.query_size))

    def sample_train(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        return self._draw("train", n_tasks, generator)

    def eval_tasks(self, split: str) -> dict[str, TaskBatch]:
        if split not in _SPLIT_OFFSET:
            raise ValueError(f"unknown split {split!r}: choose val or test")
        if split not in self._eval:
            n = self.cfg.n_val_tasks if split == "val" else self.cfg.n_test_tasks
            gen = torch.Generator().manual_seed(1000 * self.cfg.eval_seed + _SPLIT_OFFSET[split])
            self._eval[split] = self._draw(split, n, gen)
        return {split: self._eval[split]}

    def model_spec(self) -> dict:
        return {"ways": self.cfg.ways}

    def info(self) -> dict:
        n_alphabets = len({n.rsplit("/", 1)[0] for names in self.names.values() for n in names})
        counts = {f"{s}_characters": len(n) for s, n in self.names.items()}
        classes = {f"{s}_classes": len(n) * self.n_rot for s, n in self.names.items()}
        return {"alphabets": n_alphabets, "characters": sum(len(n) for n in self.names.values()),
                "drawers": self.drawers, **counts, **classes, "ways": self.cfg.ways, "shots": self.cfg.shots,
                "query_size": self.cfg.query_size, "image_size": self.cfg.image_size, **self.meta}
