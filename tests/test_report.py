"""metarec report on fake run folders: tables, numbers over seeds, plots, unfinished runs, user mistakes."""

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metarec.reporting.report import main
from metarec.reporting.runs import headline, headline_step

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(folder: Path, overrides: list[str], *, status: str = "finished", reason=None, step: int = 1000,
             user_cold_mae: float | None = 0.8, train_time_s: float | None = 12.5, eval_text: str | None = None,
             data: str = "movielens") -> Path:
    """A run folder as training and evaluation leave it; user_cold_mae=None leaves out eval.json."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    seed = int(next((o.split("=")[1] for o in overrides if o.startswith("seed=")), 0))
    algo = next((o.split("=")[1] for o in overrides if o.startswith("algo=")), "maml")
    (folder / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"seed": seed, "algo": {"name": algo, "inner_lr": 0.1}, "data": {"name": data}}))
    (folder / "status.json").write_text(json.dumps({"status": status, "reason": reason, "step": step}))
    info = {"metarec": "0.1.0", "torch": "2.3.1", "python": "3.11.7", "device": "cpu", "data_fingerprint": "ab12"}
    if train_time_s is not None:
        info["train_time_s"] = train_time_s
    (folder / "run_info.json").write_text(json.dumps(info))
    lines = []
    for s in range(100, step + 1, 100):
        lines.append(json.dumps({"step": s, "split": "train", "loss": 1.0 / s, "tasks_per_s": 850.0}))
        lines.append(json.dumps({"step": s, "split": "val", "mae": 0.9 - s / 1e4, "rmse": 1.1, "ndcg@3": 0.7}))
    text = "\n".join(lines) + "\n"
    if status == "running":
        text += '{"step": 400, "split": "tr'  # a job still writing
    (folder / "metrics.jsonl").write_text(text)
    if eval_text is not None:
        (folder / "eval.json").write_text(eval_text)
    elif user_cold_mae is not None:
        (folder / "eval.json").write_text(json.dumps(movielens_eval(user_cold_mae)))
    return folder


def movielens_eval(user_cold_mae: float) -> dict:
    floors = {"global_mean": {"mae": 0.95}, "user_mean": {"mae": 0.82}, "bias": {"mae": 0.79},
              "random": {"ndcg@3": 0.6}}

    def metrics(mae):
        return {"mae": mae, "mae_ci": 0.01, "rmse": mae + 0.2, "rmse_ci": 0.012,
                "ndcg@1": 0.7, "ndcg@3": 0.75, "ndcg@3_ci": 0.02, "ndcg@5": 0.8}

    # "10" is the last step: an ordering by string would pick "2"
    return {"states": {
        "user_cold": {"n_tasks": 300, "steps": {"0": metrics(0.99), "2": metrics(0.9), "10": metrics(user_cold_mae)},
                      "best_step": "10", "floors": floors},
        "item_cold": {"n_tasks": 200, "steps": {"0": metrics(1.0), "10": metrics(user_cold_mae + 0.1)},
                      "best_step": "10", "floors": floors},
    }}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """2 configurations x 2 seeds, one failed run, one still running: outputs/multirun/DATE/TIME."""
    root = tmp_path / "multirun" / "2024-05-01" / "12-00-00"
    make_run(root / "0", ["algo=maml", "seed=1"], user_cold_mae=0.70, train_time_s=10.0)
    make_run(root / "1", ["algo=maml", "seed=2"], user_cold_mae=0.80, train_time_s=14.0)
    make_run(root / "2", ["algo=reptile", "seed=1"], user_cold_mae=0.90)
    make_run(root / "3", ["algo=reptile", "seed=2"], user_cold_mae=0.94)
    make_run(root / "4", ["algo=prompt", "seed=1"], status="failed", step=300, user_cold_mae=None,
             reason="RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")
    make_run(root / "5", ["algo=prompt", "seed=2"], status="running", step=300, user_cold_mae=None,
             train_time_s=None)
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    return root


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_headline_is_the_largest_integer_step():
    assert headline_step({"0": {}, "2": {}, "10": {}}) == "10"
    assert headline_step({}) is None
    assert headline({"steps": {"1": {"mse": 0.5}, "0": {"mse": 2.0}}}) == {"mse": 0.5}


def test_sweep_report(sweep: Path, capsys):
    assert main([str(sweep)]) == 0  # a single sweep folder: the report goes into it
    assert "6 runs" in capsys.readouterr().out

    rows = {row["run"]: row for row in read_csv(sweep / "report.csv")}
    assert list(rows) == ["0", "1", "2", "3", "4", "5"]
    first = rows["0"]
    assert first["overrides"] == "algo=maml seed=1"
    assert (first["status"], first["algo"], first["data"]) == ("finished", "maml", "movielens")
    assert float(first["user_cold_mae"]) == 0.70 and float(first["user_cold_mae_ci"]) == 0.01
    assert float(first["item_cold_mae"]) == pytest.approx(0.80)
    assert float(first["user_cold_ndcg@3"]) == 0.75 and float(first["user_cold_ndcg@3_ci"]) == 0.02
    assert float(first["train_time_s"]) == 10.0
    assert (rows["4"]["status"], rows["4"]["user_cold_mae"]) == ("failed", "")
    assert "CUDA out of memory" in rows["4"]["reason"]
    assert (rows["5"]["status"], rows["5"]["train_time_s"]) == ("running", "")

    agg = {row["configuration"]: row for row in read_csv(sweep / "report_aggregate.csv")}
    assert set(agg) == {"algo=maml", "algo=reptile"}  # the failed / running prompt runs are not averaged
    maml = agg["algo=maml"]
    assert (maml["n_seeds"], maml["seeds"]) == ("2", "1 2")
    assert float(maml["user_cold_mae_mean"]) == pytest.approx(0.75)
    assert float(maml["user_cold_mae_std"]) == pytest.approx(0.05 * 2 ** 0.5)  # sqrt((.05² + .05²) / (2 - 1))
    assert float(maml["train_time_s_mean"]) == pytest.approx(12.0)
    assert float(maml["train_time_s_std"]) == pytest.approx(statistics.stdev([10.0, 14.0]))
    assert float(agg["algo=reptile"]["user_cold_mae_mean"]) == pytest.approx(0.92)
    assert float(agg["algo=reptile"]["user_cold_mae_std"]) == pytest.approx(0.04 / 2 ** 0.5)

    md = (sweep / "report.md").read_text()
    assert "user_cold mae" in md and "user_cold ndcg@3" in md
    assert "| 0 | algo=maml seed=1 | finished | 0.7000 ± 0.0100 |" in md
    assert "| algo=maml | 2 | 0.7500 ± 0.0707 |" in md
    assert "## Not finished" in md
    assert "| 4 | algo=prompt seed=1 | failed | 300 | RuntimeError: CUDA out of memory" in md
    assert "| 5 | algo=prompt seed=2 | running | 300 |" in md
    assert "| movielens | user_cold | bias | mae 0.7900 |" in md
    assert "![validation curves](val_curves.png)" in md and "adaptation.png" in md

    for name in ("val_curves.png", "adaptation.png"):
        data = (sweep / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, name


def test_run_folder_without_eval_is_unfinished(tmp_path: Path):
    make_run(tmp_path / "runs" / "a", ["seed=0"], user_cold_mae=None)
    make_run(tmp_path / "runs" / "b", ["seed=1"], eval_text='{"states": {"warm"')  # cut off mid-write
    make_run(tmp_path / "runs" / "c", ["seed=2"], user_cold_mae=0.8)
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    rows = {row["run"]: row for row in read_csv(tmp_path / "out" / "report.csv")}
    assert rows[str(tmp_path / "runs" / "a")]["status"] == "unfinished"
    assert rows[str(tmp_path / "runs" / "a")]["reason"] == "no eval.json"
    assert rows[str(tmp_path / "runs" / "b")]["status"] == "unfinished"
    assert "eval.json unreadable" in rows[str(tmp_path / "runs" / "b")]["reason"]
    agg = read_csv(tmp_path / "out" / "report_aggregate.csv")
    assert [(a["configuration"], a["n_seeds"], a["user_cold_mae_std"]) for a in agg] == [("(defaults)", "1", "")]


def test_single_sinusoid_run_reports_mse(tmp_path: Path, monkeypatch):
    run = make_run(tmp_path / "run", ["data=sinusoid"], user_cold_mae=None, data="sinusoid")
    steps = {str(k): {"mse": 1.0 / (k + 1), "mse_ci": 0.05} for k in range(11)}
    (run / "eval.json").write_text(json.dumps({"states": {"test": {"n_tasks": 100, "steps": steps}}}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "split": "val", "mse": 0.3}) + "\n")
    monkeypatch.chdir(tmp_path)  # a run folder given directly: the report goes into the working folder
    assert main(["run"]) == 0
    (row,) = read_csv(tmp_path / "report.csv")
    assert row["run"] == "run" and float(row["test_mse"]) == pytest.approx(1 / 11)
    md = (tmp_path / "report.md").read_text()
    assert "test mse" in md and "0.0909 ± 0.0500" in md
    assert (tmp_path / "val_curves.png").read_bytes()[:8] == PNG_MAGIC


def test_empty_folder_is_a_clear_error(tmp_path: Path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "no runs found under DIR" in err and "outputs/multirun/DATE/TIME" in err
    assert not (tmp_path / "report.md").exists()


def test_missing_folder_is_a_clear_error(tmp_path: Path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such folder" in err


def test_command_line_prints_no_traceback(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "metarec.reporting.report", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)  # a hang guard; pytest-timeout names a real hang
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert "no runs found under DIR" in done.stderr
