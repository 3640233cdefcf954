"""One live process per run folder, and a run that died is told from a live one: real subprocesses of
the installed command on sinusoid data (two runs into one folder, kill -9, resume over a dead run's
lock), and the lock and liveness rules in-process."""
import json
import os
import signal
import socket
import subprocess
import time

import pytest
from conftest import pause_env, read_json, read_until, run_cli, wait_paused
from test_resume import QUICK, assert_same_run, start, straight, train, wait_for  # noqa: F401 - straight: a fixture

from metarec.run import run_lock
from metarec.errors import UserError
from metarec.run.run_lock import RunLock, held
from metarec.reporting.runs import load_run


@pytest.mark.slow  # ml-100k runs through the console script
def test_a_second_run_into_a_live_runs_folder_is_refused_and_the_first_is_untouched(tmp_path):
    run = tmp_path / "run"
    first = start(run, env=pause_env(tmp_path))
    wait_paused(first)  # the first one stopped itself mid-training, holding the lock, until SIGCONT
    second = run_cli("train", *QUICK, "trainer.max_steps=200", f"hydra.run.dir={run}")
    resumed = run_cli("train", *QUICK, "trainer.max_steps=200", f"hydra.run.dir={run}", "trainer.resume=auto")
    first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    for r in (second, resumed):
        assert r.returncode == 2 and "Traceback" not in r.stderr
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"metarec: error: {run} is in use by another metarec train (pid "
                                                       f"{first.pid} on {socket.gethostname()}, since ")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # every line whole
    train_steps = [row["step"] for row in rows if row["split"] == "train"]
    assert train_steps == list(range(5, 201, 5))  # one run's rows, in order, none twice
    assert read_json(run / "status.json") == {"status": "finished", "reason": None, "step": 200}
    assert "trainer.resume=auto" not in (run / ".hydra" / "overrides.yaml").read_text()  # the first run's record


@pytest.mark.slow  # ml-100k runs through the console script
def test_kill_9_leaves_a_run_that_report_calls_died_and_resume_takes_its_lock_over(tmp_path, straight):  # noqa: F811
    run = tmp_path / "run"
    proc = start(run, env=pause_env(tmp_path))
    wait_paused(proc)  # step 50 is saved; the run is alive (stopped by itself) until the kill
    live = read_json(run / "status.json")
    assert live["status"] == "running" and live["pid"] == proc.pid and load_run(run).status == "running"
    proc.kill()
    proc.communicate()
    dead = read_json(run / "status.json")
    assert dead["status"] == "running" and dead["step"] == 50  # the heartbeat kept the step current
    assert load_run(run).status == "died"
    r = run_cli("report", run, cwd=tmp_path)
    assert r.returncode == 0 and "1 died" in r.stdout
    assert "| died |" in (tmp_path / "report.md").read_text()
    r = train(run, "trainer.resume=auto")
    assert "which is no longer running: this run takes the folder over" in r.stdout + r.stderr
    assert_same_run(straight, run)  # resume after kill -9 is exact


@pytest.mark.slow  # ml-100k runs through the console script
def test_the_heartbeat_and_step_move_while_a_run_trains(tmp_path):
    run = tmp_path / "run"
    proc = start(run, steps=10 ** 9)  # ends by the test's SIGTERM, never by its step count
    wait_for(run / "status.json", proc)
    seen, deadline = set(), time.monotonic() + 300
    while len(seen) < 3:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"the status moved only {len(seen)} times in 300 s"
        status = read_json(run / "status.json")
        if status["status"] == "running" and "heartbeat" in status:
            seen.add((status["step"], status["heartbeat"]))
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=300)
    steps = sorted(s for s, _ in seen)
    assert steps[-1] > steps[0]


# --- in-process ----------------------------------------------------------------------------------


def test_a_lock_is_exclusive_names_its_holder_and_is_free_after_release(tmp_path):
    lock = RunLock.take(tmp_path, "train")
    assert held(tmp_path) is True
    record = json.loads((tmp_path / ".lock").read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname() and record["what"] == "train"
    with pytest.raises(UserError, match=rf"{tmp_path} is in use by another metarec train \(pid {os.getpid()} on "):
        RunLock.take(tmp_path, "eval")
    lock.release()
    assert held(tmp_path) is False
    again = RunLock.take(tmp_path, "eval")
    assert again.stale["pid"] == os.getpid()  # the previous holder's record, for the take-over warning
    again.release()


def test_a_lock_held_by_a_process_that_died_is_free(tmp_path):
    child = subprocess.Popen(["python3", "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | "
                              "os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)",
                              str(tmp_path / ".lock")], stdout=subprocess.PIPE)
    read_until(child.stdout, b"locked\n")
    assert held(tmp_path) is True
    child.kill()
    child.wait()
    assert held(tmp_path) is False
    RunLock.take(tmp_path).release()


def write_status(path, **fields):
    path.mkdir(parents=True, exist_ok=True)
    (path / "status.json").write_text(json.dumps({"status": "running", "reason": None, "step": 7, **fields}))


def test_liveness_of_a_run_from_another_host_follows_its_heartbeat(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0}))
    write_status(tmp_path / "old", heartbeat=time.time() - run_lock.STALE_HEARTBEAT_S - 60)
    run = load_run(tmp_path / "old")
    assert run.status == "died" and "no heartbeat for 31 min" in run.reason
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0}))
    write_status(tmp_path / "new", heartbeat=time.time())
    assert load_run(tmp_path / "new").status == "running"
    write_status(tmp_path / "legacy")  # a run folder written before locks and heartbeats: as it says
    assert load_run(tmp_path / "legacy").status == "running"


def test_a_free_lock_on_this_host_means_died_whatever_the_heartbeat(tmp_path):
    RunLock.take(tmp_path).release()
    write_status(tmp_path, heartbeat=time.time())
    run = load_run(tmp_path)
    assert run.status == "died" and "at step 7" in run.reason
