"""Per-seed values on the results page (the table and the .seeds.json beside it), `metarec results --check RUN`
through the installed console script on a small fixture of run folders, and `make results`'s catalogue step."""
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ML100K, needs_ml100k, run_cli

from metarec.reporting import catalog_page, results, results_seeds
# (method, seed) -> per-task MAE on user_cold and item_cold; the floors are the same for both methods
MAE = {("maml", 0): ([0.7, 0.8, 0.9], [0.9, 1.0]), ("maml", 1): ([0.6, 0.8], [0.8, 0.8, 1.1]),
       ("ridge", 0): ([0.7, 0.7, 0.7], [0.95, 0.95]), ("ridge", 1): ([0.5, 0.7], [0.9, 0.9, 0.9])}
BIAS = {0: ([0.75, 0.85, 0.95], [1.0, 1.0]), 1: ([0.6, 0.8], [0.9, 0.9, 1.0])}
PRESETS = {"maml": ["experiment=melu_ml100k"], "ridge": ["experiment=melu_ml100k_ridge"]}
FINGERPRINT = "ab" * 32


def _state(mae: list[float], bias: list[float]) -> dict:
    mean = sum(mae) / len(mae)
    return {"n_tasks": len(mae), "headline_step": 1, "steps": {"0": {"mae": 9.0, "ndcg@3": 0.1, "ndcg_lin@3": 0.1},
                                          "1": {"mae": mean, "ndcg@3": 0.8, "ndcg_lin@3": 0.9}},
            "per_task": {"0": {"mae": [9.0] * len(mae)}, "1": {"mae": mae, "ndcg@3": [0.8] * len(mae)}},
            "floors": {"bias": {"mae": sum(bias) / len(bias), "ndcg@3": 0.7, "ndcg_lin@3": 0.8},
                       "random": {"ndcg@3": 0.6, "ndcg_lin@3": 0.7}},
            "floors_per_task": {"bias": {"mae": bias, "ndcg@3": [0.7] * len(bias)}, "random": {"ndcg@3": [0.6] * len(bias)}}}


def _config(method: str, seed: int, root: str = "/data/ml-100k", **algo) -> dict:
    """A stand-in for .hydra/config.yaml: what tells the presets apart, the seed, and the free keys."""
    return {"seed": seed, "algo": {"name": method, "inner_lr": 0.1, **algo},
            "data": {"name": "movielens", "variant": "ml-100k", "root": root, "split_seed": None},
            "trainer": {"max_steps": 100, "progress": False}, "device": {"name": "cpu", "threads": 1}}


def write_run(folder: Path, method: str, seed: int, shift: float = 0.0, config: dict | None = None) -> Path:
    """A finished run folder as `metarec train` leaves it; `shift` moves every per-task MAE of the method."""
    (folder / ".hydra").mkdir(parents=True)
    user, item = MAE[(method, seed)]
    states = {"user_cold": _state([v + shift for v in user], BIAS[seed][0]),
              "item_cold": _state([v + shift for v in item], BIAS[seed][1])}
    (folder / "eval.json").write_text(json.dumps({"states": states}))
    (folder / "status.json").write_text(json.dumps({"status": "finished", "reason": None, "step": 100}))
    (folder / "run_info.json").write_text(json.dumps({"data_fingerprint": FINGERPRINT}))
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 100, "split": "val", "mae": 0.8}) + "\n")
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config or _config(method, seed)))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*PRESETS[method], f"seed={seed}"]))
    return folder


@pytest.fixture
def page(tmp_path, monkeypatch):
    """docs/results.md and its .seeds.json from a fixture of four run folders (2 methods x 2 seeds)."""
    monkeypatch.setattr(results, "METHODS", PRESETS)
    monkeypatch.setattr(results, "preset_hparams", lambda m, data="ml-100k": f"preset of {m}")
    monkeypatch.setattr(results, "protocol", lambda methods, variant="ml-100k": "Protocol: fixture")
    monkeypatch.setattr("metarec.data.states.MIN_TASKS", 1)  # the fixture's states hold 2-3 tasks
    for (method, seed) in MAE:
        write_run(results.folder_of(tmp_path / "runs", method, seed), method, seed)
    doc = tmp_path / "docs" / "results.md"
    assert results.main(["--report-only", "--out", str(tmp_path / "runs"), "--doc", str(doc), "--seeds", "0", "1"]) == 0
    return doc


def test_the_page_has_a_per_seed_table_and_a_json_the_check_reads(page):
    text = page.read_text()
    assert "## Per-seed values" in text and "|difference| <= 0.0025 MAE" in text
    assert "| method | user_cold | item_cold |" in text  # the states in the protocol's order
    # maml: user_cold seed 0 mean(.7, .8, .9) = .8, seed 1 mean(.6, .8) = .7; item_cold .95 and .9
    assert "| maml | 0.8000 / 0.7000 | 0.9500 / 0.9000 |" in text
    assert "| ridge | 0.7000 / 0.6000 | 0.9500 / 0.9000 |" in text
    doc = json.loads(page.with_suffix(".seeds.json").read_text())
    assert doc["variant"] == "ml-100k" and doc["spread_mae"] == 0.0025 and doc["data_fingerprint"] == FINGERPRINT
    assert doc["presets"] == PRESETS
    cell = doc["values"]["ridge"]["1"]["item_cold"]
    assert cell["mae"] == pytest.approx(0.9) and cell["tasks"] == 3 and cell["floors"] == {"bias": pytest.approx(2.8 / 3)}
    assert "seed" not in doc["configs"]["maml"] and "root" not in doc["configs"]["maml"]["data"]  # free keys
    assert "device" not in doc["configs"]["maml"] and doc["configs"]["maml"]["algo"]["name"] == "maml"


def test_check_a_fresh_run_within_the_spread_agrees(page, tmp_path):
    # another machine: data elsewhere, all threads, MAE 0.002 higher on every task
    config = _config("ridge", 1, root="/elsewhere/ml-100k")
    config["device"] = {"name": "auto", "threads": None}
    run = write_run(tmp_path / "fresh", "ridge", 1, shift=0.002, config=config)
    r = run_cli("results", "--check", run, "--page", page)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{run}: ridge, split seed 1, against the page (ml-100k)"
    assert lines[1] == ("  user_cold: MAE 0.6020, page 0.6000, difference +0.0020: within the cross-machine spread "
                        "0.0025; nDCG@3 0.8000, page 0.8000")
    assert lines[-1] == "agrees with the page"


def test_check_a_run_beyond_the_spread_or_on_other_tasks_does_not_agree(page, tmp_path):
    run = write_run(tmp_path / "worse", "maml", 0, shift=0.01)
    r = run_cli("results", "--check", run, "--page", page)
    assert r.returncode == 1 and r.stdout.splitlines()[-1] == "DOES NOT agree with the page", r.stdout + r.stderr
    assert "  user_cold: MAE 0.8100, page 0.8000, difference +0.0100: BEYOND the cross-machine spread 0.0025" in r.stdout
    other = write_run(tmp_path / "other_tasks", "maml", 0)
    doc = json.loads((other / "eval.json").read_text())
    doc["states"]["item_cold"]["floors"]["bias"]["mae"] += 0.01  # the same MAE, but not the page's tasks
    (other / "eval.json").write_text(json.dumps(doc))
    r = run_cli("results", "--check", other, "--page", page.with_suffix(".seeds.json"))
    assert r.returncode == 1 and "its floors differ from the page's by up to 0.0100: other tasks or data" in r.stdout


def test_check_refuses_in_one_line_a_run_that_is_not_the_pages(page, tmp_path):
    changed = write_run(tmp_path / "changed", "maml", 0, config=_config("maml", 0, inner_lr=0.5))
    r = run_cli("results", "--check", changed, "--page", page)
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
    assert r.stderr.strip() == (f"metarec results: error: {changed} is experiment=melu_ml100k with other settings "
                                "(algo.inner_lr=0.5 (page: 0.1)): its number is not the page's; train the preset as it "
                                "is (only data.root, device.* and seed may differ)")
    r = run_cli("results", "--check", tmp_path / "nowhere", "--page", page)
    assert r.returncode == 2 and "has no eval.json: give the folder of a finished `metarec train` run" in r.stderr
    r = run_cli("results", "--check", changed, "--page", tmp_path / "missing.md")
    assert r.returncode == 2 and f"no per-seed values at {tmp_path / 'missing.seeds.json'}: give --page PATH" in r.stderr


def test_against_gives_the_paired_per_task_difference(page, tmp_path):
    a = write_run(tmp_path / "a", "maml", 0)
    b = write_run(tmp_path / "b", "ridge", 0)
    r = run_cli("results", "--check", a, "--page", page, "--against", b)
    assert r.returncode == 0, r.stdout + r.stderr
    # user_cold: maml - ridge = [0, .1, .2]: mean .1, SE sd(.1) / sqrt(3) = .057735; item_cold [-.05, .05]: 0 ± .05
    se = 0.1 / math.sqrt(3)
    assert f"  user_cold: +0.1000 ± {se:.4f} SE (z +1.7) over 3 tasks: within 2 SE or the cross-machine spread" in r.stdout
    assert "  item_cold: +0.0000 ± 0.0500 SE (z +0.0) over 2 tasks: within 2 SE or the cross-machine spread" in r.stdout
    c = write_run(tmp_path / "c", "maml", 0, shift=0.3)  # every task 0.3 worse: beyond 2 SE and the spread
    r = run_cli("results", "--check", a, "--page", page, "--against", c)
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("  item_cold: -0.3000 ± 0.0000 SE (z "))
    assert line.endswith(" over 2 tasks: a real difference"), r.stdout


def test_the_catalogue_step_runs_for_ridges_checkpoints_and_counts_in_the_wall_time(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    for (method, seed) in MAE:
        folder = results.folder_of(out, method, seed)
        write_run(folder, method, seed)
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "best.pt").write_bytes(b"")
    done = results.folder_of(out, "ridge", 1) / "catalog"  # already evaluated: not again
    done.mkdir()
    (done / "eval.json").write_text(json.dumps({"states": {"user_cold": {"catalog": {}}}}))
    assert catalog_page.missing(lambda m, k: results.folder_of(out, m, k), ["maml", "ridge"], [0, 1]) == [
        results.folder_of(out, "ridge", 0)]
    assert catalog_page.eval_args(Path("R"), ["device=cpu"]) == [
        "eval", "checkpoint=R/checkpoints/best.pt", "eval.ranking=catalog", "hydra.run.dir=R/catalog", "device=cpu"]
    calls = []
    monkeypatch.setattr(results, "catalog_one", lambda folder, extra: (calls.append((folder, extra)), (folder / "catalog", 0, 1.0))[1])
    monkeypatch.setattr(results, "METHODS", PRESETS)
    args = results.parse(["--out", str(out), "--seeds", "0", "1", "--data-root", "/d/ml-100k", "--threads", "1"])
    monkeypatch.setattr(results, "finished", lambda folder, overrides: True)  # every run trained
    trained = results.train_missing(args)
    assert calls == [(results.folder_of(out, "ridge", 0), ["data.root=/d/ml-100k", "device.threads=1", "device=cpu",
                                                           "trainer.progress=false"])]
    assert trained == [str(results.folder_of(out, "ridge", 0) / "catalog")]
    results.record_timing(args, [str(results.folder_of(out, m, s)) for m, s in MAE], 100.0)
    assert results.training_wall(args) is None  # ridge seed 1's catalogue was made by no recorded invocation
    (results.folder_of(out, "ridge", 0) / "catalog").mkdir()
    results.record_timing(args, trained + [str(done)], 20.0)
    assert results.training_wall(args) == (120.0, 2)  # the training and the catalogue evaluations


@needs_ml100k()
@pytest.mark.slow
def test_catalog_one_evaluates_a_real_checkpoint_into_its_catalog_folder(tmp_path):
    run = tmp_path / "ridge" / "seed0"
    r = run_cli("train", "algo=ridge", f"data.root={ML100K}", "trainer.max_steps=10", "trainer.val_every=10",
                "trainer.progress=false", "device=cpu", "device.threads=1", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert catalog_page.catalog_states(run) is None
    shutil.copytree(run, tmp_path / "untouched")
    folder, rc, _ = results.catalog_one(run, ["device=cpu", "device.threads=1", "trainer.progress=false"])
    assert rc == 0, (run / "catalog.log").read_text()[-3000:]
    states = catalog_page.catalog_states(run)
    assert folder == run / "catalog" and "recall@10" in states["user_cold"]["catalog"]["method"]
    assert (run / "eval.json").read_text() == (tmp_path / "untouched" / "eval.json").read_text()


def test_the_spread_stretches_with_the_scale_and_a_run_finds_its_page():
    from metarec.config.compose import compose_plain
    from metarec.reporting.results_seeds import page_name, page_of, spread
    assert spread({"data": {"name": "movielens"}}) == 0.0025  # 1-5: the measured spread
    assert spread({"data": {"name": "atomic", "rating_scale": [0, 10]}}) == 0.00625  # 2.5 times the span
    assert spread({"data": {"name": "atomic", "rating_scale": None}}) == 0.0025  # undeclared: 1-5's
    for data, protocol in (("movietweetings", "movietweetings"), ("dbook", "dbook"), ("dbook-metahin", "dbook_metahin")):
        assert page_of(compose_plain([f"+protocol={protocol}"])) == data
    assert page_of(compose_plain(["data.variant=ml-1m"])) == "ml-1m"
    assert [page_name(d) for d in ("ml-100k", "ml-1m", "dbook-metahin")] == ["results", "results-ml1m", "results-dbook-metahin"]
