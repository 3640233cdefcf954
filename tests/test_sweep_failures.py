"""A multirun with failed jobs exits 1 with one line counting them and naming their run folders, whichever
launcher ran them: joblib and submitit_local through the installed console script, the Slurm layout (which
cannot run here) on a sweep folder written by hand, read by the same code."""
import importlib.util
import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import read_json, run_cli

from metarec.run.sweep_failures import Failures, SweepFailures, count, job_folders, mark, marked

QUICK = ["data=sinusoid", "device=cpu", "device.threads=1", "trainer.max_steps=10", "trainer.val_every=10",
         "trainer.log_every=10", "trainer.progress=false", "trainer.meta_batch_size=4"]
FAILING = "algo.meta_lr=0.001,1e6"  # the second job's loss becomes nan at step 2: a UserError, its status.json says failed
needs = {name: pytest.mark.skipif(importlib.util.find_spec(f"hydra_plugins.{name}") is None,
                                  reason=f"{name} is absent: pip install 'metarec[sweep]'")
         for name in ("hydra_joblib_launcher", "hydra_submitit_launcher")}


def _job(folder: Path, status: str | None, reason: str | None = None, step: int = 3) -> Path:
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={folder.name}"]))
    if status is not None:
        (folder / "status.json").write_text(json.dumps({"status": status, "reason": reason, "step": step}))
    return folder


def _bump(path: Path) -> None:
    """A rewrite that the modification time shows even on a coarse clock."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_slurm_layout_counts_only_this_invocations_unfinished_jobs(tmp_path):
    sweep = tmp_path / "multirun"
    (sweep / ".submitit" / "4242").mkdir(parents=True)  # submitit_slurm's logs: SWEEP/.submitit/%j
    _job(sweep / "0", "failed", "an earlier invocation's failure")  # there before: not this sweep's
    _job(sweep / "1", "finished")  # written again by this sweep, finished
    before = job_folders(sweep)
    assert set(before) == {sweep / "0", sweep / "1"}
    _job(sweep / "1", "finished")
    _bump(sweep / "1" / "status.json")
    _job(sweep / "2", "failed", "the loss became nan at step 2: training stopped")
    _job(sweep / "3", "running")  # its process died (a node lost): still "running" after the sweep ended
    _job(sweep / "10", None)  # ended before its run folder had a record
    _job(sweep / "11", "interrupted", "SIGTERM: stopped")
    ended = count(sweep, before)
    assert ended.jobs == [sweep / n for n in ("1", "2", "3", "10", "11")]  # 10 after 3: by number
    assert ended.failed == [sweep / n for n in ("2", "3", "10", "11")]
    assert ended.line() == (f"4 of 5 job(s) of the sweep failed: the status.json and train.log of {sweep}/2, {sweep}/3, "
                            f"{sweep}/10, {sweep}/11 say why; the launcher's logs are in {sweep}/.submitit "
                            "(the first: the loss became nan at step 2: training stopped)")
    assert Failures(sweep, ended.jobs, []).line() == ""


def test_more_than_five_failures_are_counted_and_the_first_five_named(tmp_path):
    sweep = tmp_path / "s"
    for n in range(7):
        _job(sweep / str(n), "failed", f"reason {n}")
    line = count(sweep, {}).line()
    assert line.startswith("7 of 7 job(s) of the sweep failed: ") and f"{sweep}/4 and 2 more say why" in line
    assert f"{sweep}/5" not in line and ".submitit" not in line and line.endswith("(the first: reason 0)")


def test_the_callback_resolves_the_sweep_folder_once_and_counts_at_the_end(tmp_path):
    from omegaconf import OmegaConf

    from metarec.run import sweep_failures
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sw")}}})
    callback = SweepFailures()
    callback.on_multirun_start(cfg)
    _job(tmp_path / "sw" / "0", "failed", "why")
    callback.on_multirun_end(cfg)
    assert sweep_failures.ENDED[-1].failed == [tmp_path / "sw" / "0"]


def test_every_launcher_and_sweeper_composes_with_the_counting_callback(tmp_path):
    for launcher in ("slurm", "submitit_local", "joblib", "basic"):
        r = run_cli("train", f"hydra/launcher={launcher}", "--cfg", "hydra", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        callbacks = yaml.safe_load(r.stdout)["hydra"]["callbacks"]
        assert callbacks["sweep_failures"]["_target_"] == "metarec.run.sweep_failures.SweepFailures"


def _assert_one_failed(r, sweep: Path) -> None:
    assert r.returncode == 1, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"metarec: error: 1 of 2 job(s) of the sweep failed: the status.json and train.log of {sweep}/1 say why")
    assert last.endswith("(the first: the loss became nan at step 2: training stopped (no checkpoint was written yet): "
                         "lower algo.meta_lr or algo.inner_lr and start again)")
    assert read_json(sweep / "0" / "status.json")["status"] == "finished"
    assert read_json(sweep / "1" / "status.json")["status"] == "failed"
    assert "Traceback" not in r.stderr


@needs["hydra_joblib_launcher"]
@pytest.mark.slow
def test_joblib_sweep_with_a_failed_job_exits_1_naming_it(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *QUICK, FAILING,
                f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    _assert_one_failed(r, sweep)


@needs["hydra_submitit_launcher"]
@pytest.mark.slow
def test_submitit_local_sweep_with_a_failed_job_exits_1_naming_it_and_its_logs(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli("train", "-m", "hydra/launcher=submitit_local", *QUICK, FAILING, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    _assert_one_failed(r, sweep)
    assert f"; the launcher's logs are in {sweep}/.submitit" in r.stderr


def test_a_rerun_into_the_same_sweep_folder_counts_only_its_own_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli("train", "-m", "data=sinusoid", "trainer.meta_batch_size=0,-1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 1 and "2 of 2 job(s) of the sweep failed" in r.stderr, r.stderr[-2000:]
    # the basic launcher, one job into the same folder (a new subdir): the old failures are not counted again
    r = run_cli("train", "-m", "data=sinusoid", "trainer.meta_batch_size=0", "hydra.sweep.subdir=again",
                f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 1 and "1 of 1 job(s) of the sweep failed" in r.stderr, r.stderr[-2000:]
    assert f"{sweep}/again say why" in r.stderr


def test_a_job_refused_before_its_status_json_counts_by_its_own_mark(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = Path("rel") / "sweep"  # as the user gave it: relative; the job names its folder absolute
    _job(sweep / "0", "finished")  # an earlier run's record, which the refused job does not overwrite
    before, marks = job_folders(sweep), marked(sweep)
    _job(sweep / "0", "finished")
    _bump(sweep / "0" / ".hydra" / "overrides.yaml")  # Hydra wrote .hydra/ again for this invocation's job
    mark(sweep, 0, (tmp_path / sweep / "0").resolve(), "rel/sweep/0 already holds a run")
    ended = count(sweep, before, marks)
    assert ended.jobs == ended.failed == [sweep / "0"]
    assert ended.line().endswith("say why (the first: rel/sweep/0 already holds a run)")
    assert count(sweep, job_folders(sweep), marked(sweep)).failed == []  # the next invocation: an old mark


def test_a_sweep_rerun_into_a_finished_sweep_folder_fails_on_the_refused_job(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["train", "-m", *QUICK, "seed=0", f"hydra.sweep.dir={sweep}"]
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    r = run_cli(*args, cwd=tmp_path)  # the job's folder holds the finished run: refused, status.json untouched
    assert r.returncode == 1 and read_json(sweep / "0" / "status.json")["status"] == "finished", r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith(f"metarec: error: 1 of 1 job(s) of the sweep failed: the "
                                                         f"status.json and train.log of {sweep}/0 say why (the first: "
                                                         f"{sweep}/0 already holds a run")
