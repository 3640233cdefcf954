"""`metarec eval` keeps the checkpoint's protocol and its own folder: a seed or data key that would
redraw the split is refused (or marked, with eval.allow_protocol_change=true), a folder that holds a
run's records is refused as train refuses it, a checkpoint of another shape names the parameter, and
SIGTERM during a long evaluation stops it between chunks with nothing written. Real subprocesses."""
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import METAREC, ML100K, needs_ml100k, read_json, read_until, run_cli
from omegaconf import OmegaConf

from metarec.run.evaluate_checkpoint import protocol_key

FAST = ["trainer.progress=false", "device=cpu", "device.threads=1"]


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ml") / "run"
    r = run_cli("train", f"data.root={ML100K}", *FAST, "trainer.max_steps=10", "trainer.val_every=5",
                "data.split=[0.7,0.1,0.2]", "data.heavy_users=false",  # MeLU's split, not the tuned default's
                f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def one_error(r) -> str:
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("metarec: error: "), lines
    return lines[0]


@needs_ml100k()
@pytest.mark.parametrize("override, old", [("seed=5", "seed=0"), ("data.split=[0.6,0.2,0.2]", "data.split=[0.7, 0.1, 0.2]"),
                                           ("data.split_seed=3", "data.split_seed=None"),
                                           ("data.cut_year=1990", "data.cut_year=None"),
                                           ("data.min_ratings=20", "data.min_ratings=13"),
                                           ("data.query_size=5", "data.query_size=10"),
                                           ("data.heavy_users=true", "data.heavy_users=False")])
@pytest.mark.slow  # trains ml-100k through the console script
def test_a_key_that_redraws_the_split_is_refused_naming_both_values(ml_run, tmp_path, override, old):
    key, new = override.split("=", 1)
    line = one_error(run_cli("eval", f"checkpoint={ml_run}/checkpoints/best.pt", override, *FAST,
                             f"hydra.run.dir={tmp_path / 'e'}"))
    assert f"{key}=" in line and f"differs from the checkpoint's {old}, which decides the split" in line
    assert "eval.allow_protocol_change=true" in line
    assert not (tmp_path / "e" / "eval.json").exists()


@pytest.mark.slow  # trains ml-100k through the console script
@needs_ml100k()
def test_an_allowed_protocol_change_is_marked_at_the_top_of_eval_md_and_json(ml_run, tmp_path):
    out = tmp_path / "e"
    r = run_cli("eval", f"checkpoint={ml_run}/checkpoints/best.pt", "seed=5", "eval.allow_protocol_change=true",
                *FAST, f"hydra.run.dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "eval.md").read_text().startswith("**Protocol changed from the checkpoint's: seed 0 -> 5")
    assert read_json(out / "eval.json")["protocol_changed"] == ["seed 0 -> 5"]
    assert read_json(out / "status.json")["status"] == "finished"


@pytest.mark.slow  # trains ml-100k through the console script
@needs_ml100k()
def test_evaluation_keys_stay_free(ml_run, tmp_path):
    r = run_cli("eval", f"checkpoint={ml_run}/checkpoints/best.pt", "data.shots=5", "algo.inner_steps=2", *FAST,
                f"hydra.run.dir={tmp_path / 'e'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "protocol_changed" not in read_json(tmp_path / "e" / "eval.json")


def test_which_keys_decide_the_split():
    ml = OmegaConf.create({"seed": 0, "data": {"name": "movielens", "split_seed": None, "shots": None}})
    assert protocol_key(ml, "seed") and protocol_key(ml, "data.split") and protocol_key(ml, "data.variant")
    assert not protocol_key(ml, "data.shots") and not protocol_key(ml, "data.root") and not protocol_key(ml, "algo.inner_steps")
    ml.data.split_seed = 3  # the split follows data.split_seed, not the run's seed
    assert not protocol_key(ml, "seed")
    sinusoid = OmegaConf.create({"seed": 0, "data": {"name": "sinusoid", "n_test_tasks": 600}})
    assert not protocol_key(sinusoid, "seed") and not protocol_key(sinusoid, "data.n_test_tasks")


@pytest.mark.slow  # trains ml-100k through the console script
@needs_ml100k()
def test_eval_into_a_runs_folder_is_refused_and_the_run_is_untouched(ml_run, tmp_path):
    before = {name: (ml_run / name).read_bytes() for name in ("eval.json", "eval.md", ".hydra/overrides.yaml",
                                                               ".hydra/config.yaml", "status.json")}
    line = one_error(run_cli("eval", f"checkpoint={ml_run}/checkpoints/best.pt", *FAST, f"hydra.run.dir={ml_run}"))
    assert line.startswith(f"metarec: error: {ml_run} already holds a run (checkpoints/last.pt, ")
    assert "metarec eval writes an eval.json, eval.md and .hydra/ of its own" in line
    assert {name: (ml_run / name).read_bytes() for name in before} == before
    # an earlier evaluation's folder is refused alike
    out = tmp_path / "e"
    assert run_cli("eval", f"checkpoint={ml_run}/checkpoints/best.pt", *FAST, f"hydra.run.dir={out}").returncode == 0
    line = one_error(run_cli("eval", f"checkpoint={ml_run}/checkpoints/best.pt", *FAST, f"hydra.run.dir={out}"))
    assert f"{out} already holds a run (eval.json, eval.md, status.json)" in line


@pytest.mark.slow  # trains ml-100k through the console script
@needs_ml100k()
def test_a_checkpoint_of_another_shape_names_the_parameter_the_shapes_and_the_key(ml_run, tmp_path):
    line = one_error(run_cli("eval", f"checkpoint={ml_run}/checkpoints/best.pt", "model.embedding_dim=16", *FAST,
                             f"hydra.run.dir={tmp_path / 'e'}"))
    assert "is [3, 32] in the checkpoint but [3, 16] in the model this config builds" in line
    assert "(overridden: model.embedding_dim 32 -> 16: leave those out)" in line
    line = one_error(run_cli("eval", f"checkpoint={ml_run}", *FAST, f"hydra.run.dir={tmp_path / 'f'}"))
    assert f"is a folder, not a checkpoint file: pass {ml_run}/checkpoints/best.pt" in line


@pytest.mark.slow  # trains ml-100k through the console script
def test_sigterm_during_a_long_evaluation_stops_between_chunks_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    r = run_cli("train", "data=sinusoid", *FAST, "trainer.max_steps=2", "trainer.val_every=2", "trainer.meta_batch_size=2",
                "data.n_val_tasks=2", "data.n_test_tasks=20000", "eval.max_steps=1", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "e"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    # 20,000 tasks in chunks of 20, 500 steps each: far longer than this test waits for
    proc = subprocess.Popen([str(METAREC), "eval", f"checkpoint={run}/checkpoints/best.pt", "eval.chunk=20",
                             "eval.max_steps=500", "device=cpu", "device.threads=1",
                             f"hydra.run.dir={out}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = read_until(proc.stderr, b"evaluate")  # the evaluation's progress line: it has started
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    err = (seen + err).decode()
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    assert f"metarec: SIGTERM: stopped before the evaluation of {run}/checkpoints/best.pt was written" in err
    assert not (out / "eval.json").exists() and not (out / "eval.md").exists()
    status = read_json(out / "status.json")
    assert status["status"] == "interrupted" and "SIGTERM" in status["reason"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow  # trains ml-100k through the console script
def test_sigterm_during_a_validation_in_training_stops_there_and_resume_continues(tmp_path):
    """A validation is an evaluation too: the stop takes effect at its next chunk, last.pt keeps the
    previous validation's step (nothing half-written), and trainer.resume=auto continues from it."""
    run = tmp_path / "run"
    base = ["data=sinusoid", *FAST, "trainer.meta_batch_size=2", "trainer.log_every=1", "trainer.val_every=5",
            "data.n_val_tasks=200000", "data.n_test_tasks=2", "eval.chunk=100", "algo.inner_steps=20",
            "trainer.max_steps=10", f"hydra.run.dir={run}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([str(METAREC), "train", *base], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = run / "metrics.jsonl"
    while not (metrics.exists() and '"step": 5' in metrics.read_text()):  # step 5 logged: its validation runs now
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert "metarec: SIGTERM: stopped during the validation after step 5; nothing was saved" in err
    assert read_json(run / "status.json")["status"] == "interrupted"
    assert not (run / "checkpoints" / "last.pt").exists()
    assert all('"split": "val"' not in line for line in metrics.read_text().splitlines())
    if sys.platform.startswith("linux"):
        assert not [p for p in run.rglob("*.tmp*")]
