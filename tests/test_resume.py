"""Resume is exact: a run that is stopped (signal, kill -9, kill during a checkpoint write) and resumed,
or finished and extended, ends with the same weights, optimizer state, metrics and eval.json as a run
that never stopped. Real subprocesses of the installed command, sinusoid data (no files needed)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from conftest import METAREC, pause_env, read_json, run_cli, wait_paused

STEPS = 200  # 2N
QUICK = ["data=sinusoid", "trainer.meta_batch_size=4", "trainer.val_every=50", "trainer.log_every=5",
         "trainer.progress=false", "device=cpu", "device.threads=1", "data.n_val_tasks=20", "data.n_test_tasks=50"]


def train(run, *extra, steps=STEPS):
    r = run_cli("train", *QUICK, f"trainer.max_steps={steps}", f"hydra.run.dir={run}", *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """2N steps that never stopped: the reference every resumed run must equal."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train(run)
    return run


def metric_rows(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("tasks_per_s", None)  # wall-clock timing, the only thing allowed to differ
    return rows


def assert_same_run(a, b):
    for name in ("last.pt", "best.pt"):
        x = torch.load(a / "checkpoints" / name, weights_only=True)
        y = torch.load(b / "checkpoints" / name, weights_only=True)
        assert x["step"] == y["step"] and x["trainer"]["best_step"] == y["trainer"]["best_step"], name
        for k in x["model"]:
            assert torch.equal(x["model"][k], y["model"][k]), (name, k)
        opt_x, opt_y = x["algo"]["optimizer"]["state"], y["algo"]["optimizer"]["state"]
        assert opt_x.keys() == opt_y.keys()
        for i in opt_x:
            for k in opt_x[i]:
                assert torch.equal(opt_x[i][k], opt_y[i][k]), (name, i, k)
        assert torch.equal(x["rng"]["sampler"], y["rng"]["sampler"])
    assert read_json(a / "eval.json")["states"] == read_json(b / "eval.json")["states"]
    assert metric_rows(a) == metric_rows(b)
    assert read_json(b / "status.json")["status"] == "finished"


def start(run, *extra, base=QUICK, steps=STEPS, env=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([str(METAREC), "train", *base, f"trainer.max_steps={steps}", f"hydra.run.dir={run}",
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, timeout=120):
    t0 = time.time()
    while not (path.exists() and path.stat().st_size > 0):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.slow  # full ml-100k runs through the console script
@pytest.mark.parametrize("sig, code, resume", [(signal.SIGTERM, 143, True), (signal.SIGINT, 130, False)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_last_pt_and_resume_equals_the_straight_run(tmp_path, straight, sig, code, resume):
    run = tmp_path / "run"
    proc = start(run, env=pause_env(tmp_path))
    wait_paused(proc)  # it stopped itself after step 50's last.pt: the signal lands mid-training, however fast
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("metarec:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    stopped = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 50 <= stopped <= 51  # the step the signal came in, saved on the way out
    assert lines[0].startswith(f"metarec: {signal.Signals(sig).name}: stopped after step {stopped};")
    assert f"resume with: metarec train {' '.join(QUICK)} trainer.max_steps={STEPS} hydra.run.dir={run} " \
           f"trainer.resume=auto" in lines[0]
    status = read_json(run / "status.json")
    assert status["status"] == "interrupted" and status["step"] == stopped
    assert max(row["step"] for row in metric_rows(run)) <= stopped
    if not resume:
        return  # SIGTERM's case resumes; the path is the same
    r = train(run, "trainer.resume=auto")
    assert f"resumed from {run}/checkpoints/last.pt at step {stopped}" in r.stdout + r.stderr
    assert_same_run(straight, run)


@pytest.mark.slow  # full ml-100k runs through the console script
def test_a_finished_run_extended_by_raising_max_steps_equals_the_straight_run(tmp_path, straight):
    run = tmp_path / "run"
    train(run, steps=STEPS // 2)
    assert read_json(run / "status.json") == {"status": "finished", "reason": None, "step": STEPS // 2}
    r = train(run, "trainer.resume=auto", steps=STEPS)
    assert "not bit for bit" not in r.stdout + r.stderr
    assert_same_run(straight, run)


@pytest.mark.slow  # full ml-100k runs through the console script
def test_resuming_with_other_device_settings_warns_that_it_is_not_bit_exact(tmp_path):
    run = tmp_path / "run"
    train(run, steps=20)
    r = train(run, "trainer.resume=auto", "device.deterministic=true", steps=30)
    assert "resuming on another device, thread count or device.deterministic than" in r.stdout + r.stderr


@pytest.mark.slow  # full ml-100k runs through the console script
def test_resume_refuses_other_settings_and_a_fresh_start_never_overwrites_a_run(straight):
    # One after the other: two at once race for the folder's lock, and the loser's message is the lock's.
    # Continuing a run with other settings would mix two experiments: one line, and the record is kept.
    other = run_cli("train", *QUICK, f"trainer.max_steps={STEPS}", f"hydra.run.dir={straight}", "algo.meta_lr=0.01",
                    "trainer.resume=auto")
    # Starting over in a folder that holds a run (a forgotten trainer.resume=auto) would lose it.
    fresh = run_cli("train", *QUICK, f"trainer.max_steps={STEPS}", f"hydra.run.dir={straight}")
    other_err, fresh_err = other.stderr, fresh.stderr
    for r in (other, fresh):
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert len([line for line in r.stderr.splitlines() if line.startswith("metarec: error:")]) == 1
    assert "but algo.meta_lr 0.001 -> 0.01: resume with the run's own overrides (metarec train data=sinusoid" in other_err
    assert "already holds a run (checkpoints/last.pt): continue it with trainer.resume=auto" in fresh_err
    assert read_json(straight / "status.json")["status"] == "finished"
    assert "algo.meta_lr=0.01" not in (straight / ".hydra" / "overrides.yaml").read_text()
    assert torch.load(straight / "checkpoints" / "last.pt", weights_only=True)["step"] == STEPS


# A process that dies by SIGKILL in the middle of writing its second last.pt (step 100), half the
# bytes on disk: the fault a power cut or the OOM killer causes.
KILL_DURING_WRITE = textwrap.dedent("""
    import builtins, os, signal, sys
    real_open, last_writes = builtins.open, []
    class Dying:
        def __init__(self, f): self.f = f
        def __enter__(self): return self
        def __exit__(self, *exc): self.f.close()
        def write(self, data):
            self.f.write(bytes(data)[: len(data) // 2])
            self.f.flush()
            os.fsync(self.f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
    def open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if ".last.pt.tmp" in str(file) and "w" in mode:
            last_writes.append(file)
            if len(last_writes) == 2:
                return Dying(f)
        return f
    builtins.open = open
    from metarec.cli import main
    sys.exit(main())
""")


@pytest.mark.slow  # the heaviest of this file: three runs of 200 steps
def test_kill_9_during_a_checkpoint_write_keeps_the_previous_checkpoint_and_resume_is_exact(tmp_path, straight):
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    r = subprocess.run([sys.executable, "-c", KILL_DURING_WRITE, "train", *QUICK, f"trainer.max_steps={STEPS}",
                        f"hydra.run.dir={run}"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    leftovers = list((run / "checkpoints").glob(".last.pt.tmp-*"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0  # the half-written file
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 50  # the previous one reads

    train(run, "trainer.resume=auto")
    assert not list((run / "checkpoints").glob(".last.pt.tmp-*"))
    assert_same_run(straight, run)
