"""Sinusoid and Omniglot task sources: shapes, ranges, fixed evaluation tasks, generated Omniglot files."""
import hashlib
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_json, run_cli
from PIL import Image

from metarec.data import omniglot
from metarec.data.omniglot import OmniglotConfig, OmniglotTasks
from metarec.data.sinusoid import SinusoidConfig, SinusoidTasks
from metarec.errors import UserError

REAL_OMNIGLOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"


def batches_equal(a, b) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f))
               for f in ("support_x", "support_y", "support_mask", "query_x", "query_y", "query_mask"))


# --- sinusoid -------------------------------------------------------------------------------


def test_sinusoid_shapes_and_ranges():
    cfg = SinusoidConfig(shots=5, query_size=10)
    source = SinusoidTasks(cfg, "cpu")
    assert source.kind == "regression" and source.model_spec() == {"in_dim": 1}
    b = source.sample_train(64, torch.Generator().manual_seed(0))
    assert b.n_tasks == 64
    assert b.support_x.shape == (64, 5, 1) and b.support_y.shape == (64, 5)
    assert b.query_x.shape == (64, 10, 1) and b.query_y.shape == (64, 10)
    for t in (b.support_x, b.support_y, b.support_mask, b.query_x, b.query_y, b.query_mask):
        assert t.dtype == torch.float32
    assert torch.all(b.support_mask == 1) and torch.all(b.query_mask == 1)
    x = torch.cat([b.support_x, b.query_x], 1).squeeze(-1)  # [tasks, 15]
    y = torch.cat([b.support_y, b.query_y], 1)
    assert x.min() >= -5 and x.max() <= 5 and y.abs().max() <= 5
    # Each task is one sinusoid: y = a sin x + c cos x exactly, with A = |(a, c)| in range.
    basis = torch.stack([torch.sin(x), torch.cos(x)], -1).double()  # [tasks, 15, 2]
    coef = torch.linalg.lstsq(basis, y.double().unsqueeze(-1)).solution  # [tasks, 2, 1]
    assert (basis @ coef - y.double().unsqueeze(-1)).abs().max() < 1e-4
    amp = coef.squeeze(-1).norm(dim=-1)
    assert amp.min() >= 0.1 - 1e-4 and amp.max() <= 5.0 + 1e-4
    phase = torch.atan2(-coef[:, 1, 0], coef[:, 0, 0])  # a = A cos(phase), c = -A sin(phase)
    assert phase.min() >= -1e-4 and phase.max() <= math.pi + 1e-4


def test_sinusoid_generator_reproducible_and_global_rng_untouched():
    source = SinusoidTasks(SinusoidConfig(), "cpu")
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = source.sample_train(8, torch.Generator().manual_seed(7))
    assert torch.equal(torch.rand(3), expected_next)  # only the given generator was used
    assert batches_equal(a, source.sample_train(8, torch.Generator().manual_seed(7)))
    assert not batches_equal(a, source.sample_train(8, torch.Generator().manual_seed(8)))


def test_sinusoid_eval_tasks_fixed_by_seed():
    cfg = SinusoidConfig(n_val_tasks=100, n_test_tasks=600)
    val, test = SinusoidTasks(cfg, "cpu").eval_tasks("val"), SinusoidTasks(cfg, "cpu").eval_tasks("test")
    assert set(val) == {"val"} and set(test) == {"test"}
    assert val["val"].n_tasks == 100 and test["test"].n_tasks == 600
    again = SinusoidTasks(cfg, "cpu")
    assert batches_equal(again.eval_tasks("test")["test"], test["test"])
    assert batches_equal(again.eval_tasks("val")["val"], val["val"])
    assert not torch.equal(val["val"].support_x, test["test"].support_x[:100])
    other = SinusoidTasks(SinusoidConfig(eval_seed=1), "cpu").eval_tasks("test")["test"]
    assert not torch.equal(other.support_x, test["test"].support_x)
    with pytest.raises(ValueError):
        again.eval_tasks("train")
    assert SinusoidTasks(cfg, "cpu").info()["test_tasks"] == 600


# --- omniglot on generated files ----------------------------------------------------------------

LAYOUT = {"images_background": {"Alpha": 3, "Beta": 3}, "images_evaluation": {"Gamma": 2}}  # 8 characters


def make_omniglot(folder: Path, seed: int = 0) -> Path:
    """The official layout with random 105x105 1-bit PNGs: PART/ALPHABET/characterNN/CCCC_DD.png."""
    rng = np.random.default_rng(seed)
    char_id = 0
    for part, alphabets in LAYOUT.items():
        for alphabet, n_chars in alphabets.items():
            for c in range(1, n_chars + 1):
                char_id += 1
                d = folder / part / alphabet / f"character{c:02d}"
                d.mkdir(parents=True)
                for drawer in range(1, 21):
                    pixels = rng.random((105, 105)) < 0.9  # mostly white (True), like the real ones
                    Image.fromarray(pixels).save(d / f"{char_id:04d}_{drawer:02d}.png")
    return folder


def zip_parts(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for part in LAYOUT:
        with zipfile.ZipFile(dest / f"{part}.zip", "w") as zf:
            for p in sorted((src / part).rglob("*.png")):
                zf.write(p, p.relative_to(src).as_posix())
    return dest


@pytest.fixture
def omniglot_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("METAREC_CACHE", str(tmp_path / "cache"))
    folders = make_omniglot(tmp_path / "folders")
    return folders, zip_parts(folders, tmp_path / "zips")


def small_cfg(root: Path, **kw) -> OmniglotConfig:
    return OmniglotConfig(root=str(root), **{"ways": 3, "shots": 2, "query_size": 4, "train_classes": 5,
                                             "val_classes": 1, "n_val_tasks": 6, "n_test_tasks": 9, **kw})


def test_omniglot_decodes_zips_and_folders_alike(omniglot_dirs):
    folders, zips = omniglot_dirs
    a, names, _ = omniglot.load_images(str(zips))
    b, names_b, _ = omniglot.load_images(str(folders))
    assert a.shape == (8, 20, 28, 28) and a.dtype == np.uint8
    assert np.array_equal(a, b) and names == names_b
    assert names[0] == "images_background/Alpha/character01" and names[-1] == "images_evaluation/Gamma/character02"
    # Strokes (black = False in the 1-bit PNG) become bright: the mean ink is about 10%.
    assert 0.05 < a.mean() / 255 < 0.15
    first = np.asarray(Image.open(folders / "images_background/Alpha/character01/0001_01.png").convert("L")
                       .resize((28, 28), Image.Resampling.BOX))
    assert np.array_equal(a[0, 0], 255 - first)


def test_omniglot_tasks_shapes_labels_and_rotations(omniglot_dirs):
    _, zips = omniglot_dirs
    source = OmniglotTasks(small_cfg(zips), "cpu")
    assert source.kind == "classification" and source.model_spec() == {"ways": 3}
    info = source.info()
    assert (info["characters"], info["alphabets"], info["drawers"]) == (8, 3, 20)
    assert (info["train_characters"], info["val_characters"], info["test_characters"]) == (4, 1, 3)
    assert (info["train_classes"], info["val_classes"], info["test_classes"]) == (16, 4, 12)
    # Every image a task holds, looked up among all (split character, drawer, rotation) images.
    pixels, names, _ = omniglot.load_images(str(zips))
    lookup = {}
    for ci, name in enumerate(names):
        for drawer in range(20):
            for k in range(4):
                lookup[np.rot90(pixels[ci, drawer], k).tobytes()] = (name, drawer, k)
    b = source.sample_train(50, torch.Generator().manual_seed(0))
    assert b.support_x.shape == (50, 6, 1, 28, 28) and b.query_x.shape == (50, 12, 1, 28, 28)
    assert b.support_y.dtype == torch.long and b.support_x.dtype == torch.float32
    assert b.support_x.min() >= 0 and b.support_x.max() <= 1
    assert torch.all(b.support_mask == 1) and b.query_mask.shape == (50, 12)
    rotations, first_labels = set(), set()
    for t in range(50):
        classes = {}
        for x, y in [(b.support_x[t], b.support_y[t]), (b.query_x[t], b.query_y[t])]:
            for xi, yi in zip(x, y.tolist()):
                name, drawer, k = lookup[(xi[0] * 255).round().to(torch.uint8).numpy().tobytes()]
                assert name in source.names["train"]
                classes.setdefault(yi, []).append((name, k, drawer))
                rotations.add(k)
        assert sorted(classes) == [0, 1, 2]
        assert len({(n, k) for c in classes.values() for n, k, _ in c}) == 3  # 3 distinct classes
        for members in classes.values():
            assert len({(n, k) for n, k, _ in members}) == 1  # one class per label
            assert len({d for _, _, d in members}) == 6  # 2 + 4 different drawers
        first_labels.add(classes[0][0][:2])
    assert rotations == {0, 1, 2, 3}
    assert len(first_labels) > 4  # label 0 means a different class from task to task


def test_omniglot_without_rotations_and_config_errors(omniglot_dirs):
    _, zips = omniglot_dirs
    source = OmniglotTasks(small_cfg(zips, ways=2, rotations=False, train_classes=6, val_classes=2), "cpu")
    assert source.info()["train_classes"] == 4
    b = source.sample_train(5, torch.Generator().manual_seed(0))
    assert b.support_x.shape == (5, 4, 1, 28, 28)
    with pytest.raises(UserError, match="fewer than data.ways"):
        OmniglotTasks(small_cfg(zips, rotations=False), "cpu")  # 1 val character < 3 ways
    with pytest.raises(UserError, match="exceeds"):
        OmniglotTasks(small_cfg(zips, shots=10, query_size=11), "cpu")
    with pytest.raises(UserError, match="train_classes"):
        OmniglotTasks(small_cfg(zips, train_classes=100), "cpu")


def test_omniglot_generator_and_eval_tasks_fixed(omniglot_dirs):
    _, zips = omniglot_dirs
    source = OmniglotTasks(small_cfg(zips), "cpu")
    a = source.sample_train(4, torch.Generator().manual_seed(3))
    assert batches_equal(a, source.sample_train(4, torch.Generator().manual_seed(3)))
    assert not batches_equal(a, source.sample_train(4, torch.Generator().manual_seed(4)))
    test = source.eval_tasks("test")
    assert set(test) == {"test"} and test["test"].n_tasks == 9
    assert source.eval_tasks("val")["val"].n_tasks == 6
    again = OmniglotTasks(small_cfg(zips), "cpu")
    assert batches_equal(again.eval_tasks("test")["test"], test["test"])
    assert not batches_equal(OmniglotTasks(small_cfg(zips, eval_seed=1), "cpu").eval_tasks("test")["test"],
                             test["test"])


def test_omniglot_decoded_cache_reused(omniglot_dirs, monkeypatch, tmp_path):
    _, zips = omniglot_dirs
    first = OmniglotTasks(small_cfg(zips), "cpu")
    cached = Path(first.info()["decoded_cache"])
    assert cached.is_file() and cached.parent == tmp_path / "cache" / "omniglot"
    assert not [p for p in cached.parent.iterdir() if p.name.startswith(".")]  # no temp files left

    def no_decode(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(omniglot, "decode_all", no_decode)
    second = OmniglotTasks(small_cfg(zips), "cpu")
    assert batches_equal(first.eval_tasks("val")["val"], second.eval_tasks("val")["val"])
    with pytest.raises(AssertionError, match="decoded again"):  # another image size is another key
        OmniglotTasks(small_cfg(zips, image_size=14), "cpu")


def test_omniglot_missing_root_is_one_line(tmp_path):
    with pytest.raises(UserError, match="images_background or images_evaluation") as err:
        OmniglotTasks(OmniglotConfig(root=str(tmp_path)), "cpu")
    assert "\n" not in str(err.value)


def test_omniglot_download_verified_and_atomic(omniglot_dirs, monkeypatch, tmp_path):
    _, zips = omniglot_dirs
    monkeypatch.setattr(omniglot, "URL", (zips.as_uri() + "/{part}.zip"))
    md5 = {part: hashlib.md5((zips / f"{part}.zip").read_bytes()).hexdigest() for part in omniglot.PARTS}
    cache = tmp_path / "cache" / "omniglot"
    monkeypatch.setattr(omniglot, "MD5", {**md5, "images_evaluation": "0" * 32})  # the second one is corrupt
    with pytest.raises(UserError, match="could not get Omniglot images_evaluation") as err:
        omniglot.find_sources(None)
    assert "MD5" in str(err.value) and "data.root" in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in cache.iterdir()) == ["images_background.zip"]  # nothing half-written
    monkeypatch.setattr(omniglot, "MD5", md5)
    source = OmniglotTasks(OmniglotConfig(ways=3, shots=2, query_size=4, train_classes=5, val_classes=1), "cpu")
    assert source.info()["sources"] == [str(cache / f"{part}.zip") for part in omniglot.PARTS]
    monkeypatch.setattr(omniglot, "URL", "http://127.0.0.1:9/{part}.zip")  # cached now: no network needed
    OmniglotTasks(OmniglotConfig(ways=3, shots=2, query_size=4, train_classes=5, val_classes=1), "cpu")


def test_omniglot_unreachable_download_names_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("METAREC_CACHE", str(tmp_path))
    monkeypatch.setattr(omniglot, "URL", "http://127.0.0.1:9/{part}.zip")
    with pytest.raises(UserError, match="127.0.0.1:9/images_background.zip") as err:
        OmniglotTasks(OmniglotConfig(), "cpu")
    assert "cache" in str(err.value) and "data.root" in str(err.value)


# --- omniglot, the real files -------------------------------------------------------------------


@pytest.mark.slow  # decodes all 32,460 PNGs into a fresh cache (the generated folders above cover the code paths)
@pytest.mark.skipif(not REAL_OMNIGLOT.is_dir(), reason="no shared Omniglot copy")
def test_real_omniglot_counts(monkeypatch, tmp_path):
    monkeypatch.setenv("METAREC_CACHE", str(tmp_path))
    source = OmniglotTasks(OmniglotConfig(root=str(REAL_OMNIGLOT)), "cpu")
    info = source.info()
    assert (info["characters"], info["alphabets"], info["drawers"]) == (1623, 50, 20)
    assert (info["train_characters"], info["val_characters"], info["test_characters"]) == (1100, 100, 423)
    assert (info["train_classes"], info["val_classes"], info["test_classes"]) == (4400, 400, 1692)
    assert sum(n.startswith("images_background/") for names in source.names.values() for n in names) == 964
    b = source.eval_tasks("test")["test"]
    assert b.n_tasks == 600 and b.support_x.shape == (600, 5, 1, 28, 28) and b.query_x.shape == (600, 75, 1, 28, 28)
    assert 0.03 < b.query_x.mean().item() < 0.2  # dark background, bright strokes


@pytest.mark.parametrize("preset", ["maml_omniglot_5w1s", "reptile_omniglot_5w1s"])
def test_omniglot_presets_run_end_to_end(omniglot_dirs, tmp_path, preset):
    """Each Omniglot preset, as `metarec train experiment=...` runs it (the real console script), shrunk
    to the generated folders: a few meta-steps, validation, then test accuracy in eval.json."""
    folders, _ = omniglot_dirs
    run = tmp_path / "run"
    r = run_cli("train", f"experiment={preset}", f"data.root={folders}", "data.ways=3", "data.query_size=2",
                "data.train_classes=5", "data.val_classes=1", "data.n_val_tasks=2", "data.n_test_tasks=3",
                "model.channels=4", "trainer.max_steps=4", "trainer.val_every=2", "trainer.meta_batch_size=2",
                "trainer.progress=false", "algo.eval_steps=2", "eval.max_steps=2", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-2000:]
    result = read_json(run / "eval.json")
    state = next(iter(result["states"].values()))
    assert state["n_tasks"] == 3 and set(state["steps"]) == {"0", "1", "2"}
    assert all(0.0 <= s["acc"] <= 1.0 for s in state["steps"].values())
    assert (run / "checkpoints" / "best.pt").exists()


def test_sinusoid_preset_runs_end_to_end(tmp_path):
    """`metarec train experiment=maml_sinusoid`, shrunk: MSE after 0..10 steps on the fixed test tasks."""
    run = tmp_path / "run"
    r = run_cli("train", "experiment=maml_sinusoid", "trainer.max_steps=4", "trainer.val_every=2",
                "data.n_val_tasks=4", "data.n_test_tasks=5", "trainer.progress=false", f"hydra.run.dir={run}",
                env={"METAREC_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-2000:]
    state = next(iter(read_json(run / "eval.json")["states"].values()))
    assert state["n_tasks"] == 5 and set(state["steps"]) == {str(k) for k in range(11)}
    assert all(s["mse"] > 0 for s in state["steps"].values())
