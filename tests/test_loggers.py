"""trainer.loggers: a run folder sent to MLflow (read back with MLflow's own client on the file store) and
to W&B (read back from its offline run file with W&B's own record schema); a tracker's failure is one
warning and the run folder stays; a 3-job sweep is one MLflow experiment with a run per job."""
from __future__ import annotations

import importlib.util
import json
import logging
import struct
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from omegaconf import OmegaConf

from metarec.config.extras import check_loggers
from metarec.run import loggers
from metarec.errors import UserError

has = {name: importlib.util.find_spec(name) is not None for name in ("mlflow", "wandb")}
needs_mlflow = pytest.mark.skipif(not has["mlflow"], reason="mlflow is absent: pip install 'metarec[mlflow]'")
needs_wandb = pytest.mark.skipif(not has["wandb"], reason="wandb is absent: pip install 'metarec[wandb]'")

CONFIG = {"seed": 3, "algo": {"name": "maml", "inner_lr": 0.1, "first_order": False},
          "data": {"name": "sinusoid", "split": [0.7, 0.1, 0.2]},
          "trainer": {"loggers": ["mlflow"], "tensorboard": False, "tracking_experiment": None, "tracking_uri": None}}
PARAMS = {"seed": "3", "algo.name": "maml", "algo.inner_lr": "0.1", "algo.first_order": "False",
          "data.name": "sinusoid", "data.split": "[0.7, 0.1, 0.2]", "trainer.loggers": "['mlflow']",
          "trainer.tensorboard": "False", "trainer.tracking_experiment": "None", "trainer.tracking_uri": "None"}
ROWS = [{"step": 10, "split": "train", "loss": 0.5, "tasks_per_s": 900.0},
        {"step": 10, "split": "val", "mae": 0.8, "ndcg@3": 0.7},
        {"step": 20, "split": "train", "loss": 0.4, "tasks_per_s": 950.0},
        {"step": 20, "split": "val", "mae": 0.75, "ndcg@3": 0.72}]
EVAL = {"best_step": 20, "states": {"user_cold": {
    "headline_step": 1, "steps": {"0": {"mae": 0.9}, "1": {"mae": 0.74, "mae_ci": 0.01, "ndcg@3": 0.71}},
    "floors": {"bias": {"mae": 0.76, "ndcg@3": 0.7}}}}}
TEST = {"test/user_cold/mae": 0.74, "test/user_cold/mae_ci": 0.01, "test/user_cold/ndcg@3": 0.71,
        "test/user_cold/floor/bias/mae": 0.76, "test/user_cold/floor/bias/ndcg@3": 0.7}
FILES = ["checkpoints/best.pt", "eval.json", "metrics.jsonl", "status.json"]


def run_folder(path: Path, status: str = "finished") -> Path:
    (path / "checkpoints").mkdir(parents=True)
    (path / "checkpoints" / "best.pt").write_bytes(b"weights")
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS) + '{"step": 30, "spl')  # a cut line
    (path / "eval.json").write_text(json.dumps(EVAL))
    (path / "status.json").write_text(json.dumps({"status": status, "step": 20}))
    (path / ".lock").write_text("")
    return path


def cfg(**trainer):
    return OmegaConf.create({**CONFIG, "trainer": {**CONFIG["trainer"], **trainer}})


def test_names_params_and_the_tensorboard_alias():
    assert loggers.flatten(CONFIG) == PARAMS
    assert loggers.mlflow_name("val/ndcg@3") == "val/ndcg_at_3" and loggers.mlflow_name("a(b)") == "a_b_"
    assert loggers.requested(cfg(loggers=["mlflow", "mlflow"], tensorboard=True)) == ["mlflow", "tensorboard"]
    assert loggers.requested(cfg(loggers=["tensorboard"], tensorboard=True)) == ["tensorboard"]


def test_a_jobs_name_holds_the_overrides_its_sweep_varies(tmp_path):
    multirun = tmp_path / "multirun.yaml"
    multirun.write_text(yaml.safe_dump({"hydra": {"overrides": {"task": [
        "algo=maml,reptile", "seed=range(0,3)", "data=sinusoid", "trainer.progress=false"]}}}))
    job = ["algo=reptile", "seed=2", "data=sinusoid", "trainer.progress=False", "algo.meta_lr=0.003"]  # the last: Optuna's
    assert loggers.swept(job, multirun) == ["algo=reptile", "seed=2", "algo.meta_lr=0.003"]
    assert loggers.swept(job, tmp_path / "absent.yaml") == job


def test_an_unknown_or_missing_logger_is_one_clear_line():
    with pytest.raises(UserError, match=r"^trainer.loggers: 'neptune' is not one of tensorboard, mlflow, wandb$"):
        check_loggers(cfg(loggers=["neptune"]), lambda m: False)
    with pytest.raises(UserError, match=r"^trainer.loggers=\[wandb\] needs the wandb extra \(wandb is not installed\): "
                                        r"pip install 'metarec\[wandb\]', or drop wandb from trainer.loggers$"):
        check_loggers(cfg(loggers=["wandb"]), lambda m: m == "wandb")


def mlflow_client(store: Path):
    import os
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=store.as_uri())


def expected_history() -> dict[str, list[tuple[int, float]]]:
    """metric -> [(step, value)], from ROWS and EVAL as MLflow names them (@ -> _at_)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in ROWS:
        for k, v in row.items():
            if k not in ("step", "split"):
                out.setdefault(f"{row['split']}/{k}".replace("@", "_at_"), []).append((row["step"], v))
    for k, v in TEST.items():
        out[k.replace("@", "_at_")] = [(EVAL["best_step"], v)]
    return out


@needs_mlflow
def test_mlflow_run_read_back_with_mlflows_client_equals_the_run_folder(tmp_path):
    run = run_folder(tmp_path / "runs" / "15-00-00")
    store = tmp_path / "mlruns"
    loggers.publish(cfg(tracking_uri=store.as_uri(), tracking_experiment="trial"), run)
    client = mlflow_client(store)
    experiment = client.get_experiment_by_name("trial")
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.run_name == "15-00-00" and logged.info.status == "FINISHED"
    params = {**PARAMS, "trainer.tracking_uri": store.as_uri(), "trainer.tracking_experiment": "trial"}
    assert logged.data.params == params and logged.data.tags["metarec.run_dir"] == str(run)
    history = {k: sorted((m.step, m.value) for m in client.get_metric_history(logged.info.run_id, k))
               for k in logged.data.metrics}
    assert history == expected_history()
    files = sorted(f.path for f in _walk(client, logged.info.run_id, None))
    assert files == FILES and (run / "metrics.jsonl").is_file()  # the lock file stays out; the folder stays
    local = client.download_artifacts(logged.info.run_id, "checkpoints/best.pt", str(tmp_path))
    assert Path(local).read_bytes() == b"weights"


def _walk(client, run_id: str, path: str | None):
    for f in client.list_artifacts(run_id, path):
        yield from (_walk(client, run_id, f.path) if f.is_dir else [f])


@needs_mlflow
def test_a_failed_run_is_logged_failed_and_a_broken_tracker_is_one_warning(tmp_path, caplog):
    run = run_folder(tmp_path / "run", status="failed")
    store = tmp_path / "mlruns"
    loggers.publish(cfg(tracking_uri=store.as_uri()), run)
    (logged,) = mlflow_client(store).search_runs([mlflow_client(store).get_experiment_by_name("metarec").experiment_id])
    assert logged.info.status == "FAILED"
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")  # the store's place is taken: MLflow cannot write there
    with caplog.at_level(logging.WARNING, logger="metarec"):
        loggers.publish(cfg(tracking_uri=(blocked / "mlruns").as_uri()), run)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("trainer.loggers: mlflow could not log this run (")
    assert warnings[0].endswith(f"the run folder {run} is the record") and "\n" not in warnings[0]
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()) == [".lock", *FILES]


def wandb_records(path: Path) -> list:
    """The records of a W&B offline run file (.wandb), parsed with W&B's own protobuf schema; the file is
    a LevelDB-style log: a 7-byte header (':W&B', magic, version), then 32 KiB blocks of chunks, each with a
    7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, out = 7, b"", []
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


@needs_wandb
def test_wandb_offline_run_file_read_back_equals_the_run_folder(tmp_path, monkeypatch, caplog):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login: offline
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    run = run_folder(tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="metarec"):
        loggers.publish(cfg(loggers=["wandb"]), run)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    found = list((run / "wandb").glob("offline-run-*"))
    assert len(found) == 1, sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))
    offline = found[0]
    (wandb_file,) = offline.glob("run-*.wandb")
    records = wandb_records(wandb_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert kinds.count("run") == 1, (kinds, wandb_file.stat().st_size)
    (start,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert start.display_name == "run" and start.project == "metarec"
    config = {u.key: json.loads(u.value_json) for u in start.config.update if u.key != "_wandb"}
    assert config == {**PARAMS, "trainer.loggers": "['wandb']"}
    history: dict[int, dict] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            history[items.pop("_step")] = {k: v for k, v in items.items() if not k.startswith("_")}
    expected: dict[int, dict] = {}
    for row in ROWS:
        expected.setdefault(row["step"], {}).update({f"{row['split']}/{k}": v for k, v in row.items() if k not in ("step", "split")})
    assert history == expected
    summary = {(u.key or "/".join(u.nested_key)): json.loads(u.value_json)
               for r in records if r.WhichOneof("record_type") == "summary" for u in r.summary.update}
    assert {k: summary[k] for k in TEST} == TEST
    assert "exit" in kinds and [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [0]
    copies = sorted(p.relative_to(offline / "files").as_posix() for p in (offline / "files").rglob("*")
                    if p.is_file() and p.name != "requirements.txt")
    assert copies == FILES and (offline / "files" / "eval.json").read_text() == (run / "eval.json").read_text()


QUICK = ["data=sinusoid", "device=cpu", "device.threads=1", "trainer.max_steps=20", "trainer.val_every=10",
         "trainer.log_every=10", "trainer.progress=false", "trainer.meta_batch_size=4"]


@needs_mlflow
@pytest.mark.slow
def test_a_3_job_sweep_is_one_mlflow_experiment_with_a_run_per_job(tmp_path):
    r = run_cli("train", "-m", "seed=0,1,2", *QUICK, "trainer.loggers=[mlflow]", f"hydra.sweep.dir={tmp_path}/sweep",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    client = mlflow_client(tmp_path / "outputs" / "mlruns")
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert [e.name for e in experiments] == [f"{tmp_path}/sweep"]
    logged = {run.info.run_name: run for run in client.search_runs([experiments[0].experiment_id])}
    assert sorted(logged) == ["0: seed=0", "1: seed=1", "2: seed=2"]
    for name, run in logged.items():
        folder = tmp_path / "sweep" / name.split(":")[0]
        assert run.info.status == "FINISHED" and run.data.params["seed"] == name[-1]
        assert run.data.tags["metarec.overrides"] == " ".join(yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()))
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        val = [(row["step"], row["mse"]) for row in rows if row["split"] == "val"]
        got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val/mse"))
        assert got == val and len(val) == 2
        state, doc = next(iter(json.loads((folder / "eval.json").read_text())["states"].items()))
        assert run.data.metrics[f"test/{state}/mse"] == doc["steps"][str(doc["headline_step"])]["mse"]


@needs_mlflow
def test_jobs_racing_to_make_the_sweeps_experiment_share_it(tmp_path):
    client = mlflow_client(tmp_path / "mlruns")
    made = client.create_experiment("outputs/multirun/x")  # another job made it between our look and our create

    class Late:  # the look that came before that job's create
        def __init__(self):
            self.looks = 0

        def get_experiment_by_name(self, name):
            self.looks += 1
            return None if self.looks == 1 else client.get_experiment_by_name(name)

        def create_experiment(self, name):
            return client.create_experiment(name)

    assert loggers._experiment(Late(), "outputs/multirun/x") == made


@needs_mlflow
@pytest.mark.slow
def test_a_tracker_that_fails_costs_the_run_nothing(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    r = run_cli("train", *QUICK, "trainer.loggers=[mlflow]", f"trainer.tracking_uri={(blocked / 'mlruns').as_uri()}",
                f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [line for line in (r.stdout + r.stderr).splitlines() if "trainer.loggers: mlflow could not log" in line]
    assert len(warnings) == 1 and warnings[0].endswith(f"the run folder {tmp_path}/run is the record")
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "finished"
    assert (tmp_path / "run" / "eval.json").is_file() and (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
