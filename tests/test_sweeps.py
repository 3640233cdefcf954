"""Sweeps through the real `metarec train -m`: joblib (local parallel) into outputs/multirun/DATE/TIME/N,
submitit_local, Optuna on sqlite storage resumed once, `metarec report` on a sweep; the Slurm and
hparams_search presets compose; TensorBoard events carry the scalars of metrics.jsonl."""
import importlib.util
import json
import re
import sys
import types
from pathlib import Path

import pytest
import yaml
from conftest import read_json, run_cli
from PIL import Image

from metarec.run.device import cpu_count
from metarec.errors import UserError
from metarec.run.run_folder import RunFolder

QUICK = ["data=sinusoid", "device=cpu", "device.threads=1", "trainer.max_steps=20", "trainer.val_every=10",
         "trainer.log_every=10", "trainer.progress=false"]
needs = {name: pytest.mark.skipif(importlib.util.find_spec(f"hydra_plugins.{name}") is None,
                                  reason=f"{name} is absent: pip install 'metarec[sweep]'")
         for name in ("hydra_joblib_launcher", "hydra_submitit_launcher", "hydra_optuna_sweeper")}


def _runs(sweep: Path) -> dict[str, Path]:
    return {p.name: p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()}


def _overrides(run: Path) -> dict[str, str]:
    return dict(o.split("=", 1) for o in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()))


def _best_val(run: Path, metric: str = "mse") -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return min(r[metric] for r in rows if r["split"] == "val")


def _assert_png(path: Path) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 200 and im.height > 150
        colors = im.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colors is None or len(colors) > 20, f"{path.name} looks blank"  # None: more colors than that


@needs["hydra_joblib_launcher"]
@pytest.mark.slow
def test_joblib_2x2_sweep_lands_in_outputs_multirun_and_reports(tmp_path):
    r = run_cli("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "algo=maml,reptile", "seed=0,1",
                *QUICK, "trainer.meta_batch_size=4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in r.stdout + r.stderr
    sweeps = list((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 1 and re.fullmatch(r"\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}",
                                             sweeps[0].relative_to(tmp_path / "outputs" / "multirun").as_posix())
    sweep = sweeps[0]
    assert [p.name for p in tmp_path.iterdir()] == ["outputs"]  # one top-level outputs/, nothing else
    runs = _runs(sweep)
    assert sorted(runs) == ["0", "1", "2", "3"] and (sweep / "multirun.yaml").is_file()
    combos = {(_overrides(run)["algo"], _overrides(run)["seed"]) for run in runs.values()}
    assert combos == {("maml", "0"), ("maml", "1"), ("reptile", "0"), ("reptile", "1")}
    cpus = cpu_count()
    for run in runs.values():
        assert read_json(run / "status.json")["status"] == "finished"
        assert "mse" in read_json(run / "eval.json")["states"]["test"]["steps"]["1"]
        info = read_json(run / "run_info.json")  # two jobs at a time: each takes its share of the cores
        assert info["parallel_jobs"] == min(2, cpus) and info["threads"] == max(1, cpus // min(2, cpus))

    r = run_cli("report", sweep, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4 runs: 4 finished" in r.stdout
    for name in ("report.md", "report.csv", "report_aggregate.csv", "val_curves.png", "adaptation.png"):
        assert (sweep / name).is_file(), name
    _assert_png(sweep / "val_curves.png")
    _assert_png(sweep / "adaptation.png")
    md = (sweep / "report.md").read_text()
    assert "![validation curves](val_curves.png)" in md and "![metric by adaptation step](adaptation.png)" in md
    aggregate = [row for row in md.splitlines() if row.startswith("| algo=")]
    assert len(aggregate) == 2 and all("| 2 |" in row for row in aggregate)  # two configurations, two seeds each


@needs["hydra_submitit_launcher"]
@pytest.mark.slow
def test_submitit_local_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli("train", "-m", "hydra/launcher=submitit_local", "seed=0,1", *QUICK, "trainer.max_steps=10",
                "trainer.meta_batch_size=4", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = _runs(sweep)
    assert sorted(runs) == ["0", "1"] and (sweep / ".submitit").is_dir()
    assert all(read_json(run / "status.json")["status"] == "finished" for run in runs.values())
    r = run_cli("report", sweep, cwd=tmp_path)
    assert r.returncode == 0 and "2 runs: 2 finished" in r.stdout, r.stdout + r.stderr[-2000:]


@needs["hydra_optuna_sweeper"]
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Deprecated API features detected")  # optuna 2 on sqlalchemy 1.4
def test_optuna_sweep_on_sqlite_storage_resumes_the_study(tmp_path):
    import optuna
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = ["hparams_search=maml_movielens", *QUICK, f"hydra.sweeper.storage={db}",
              "hydra.sweeper.study_name=test_study"]
    # seeded samplers (another seed for the second invocation, which would otherwise repeat the first's
    # random trials): the preset's ranges are ml-100k's, and an unlucky draw diverges on sinusoids
    r = run_cli("train", "-m", *search, "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.seed=0",
                f"hydra.sweep.dir={tmp_path}/a", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli("train", "-m", *search, "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.seed=1",
                f"hydra.sweep.dir={tmp_path}/b", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]

    trials = optuna.load_study(study_name="test_study", storage=db).trials
    assert [t.number for t in trials] == list(range(6))  # the second invocation continued the study
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert set(trials[0].params) == {"algo.inner_lr", "algo.meta_lr", "algo.inner_steps", "trainer.meta_batch_size"}
    runs = [_runs(tmp_path / "a")[str(i)] for i in range(4)] + [_runs(tmp_path / "b")[str(i)] for i in range(2)]
    for trial, run in zip(trials, runs):
        overrides = _overrides(run)
        assert {k: str(v) for k, v in trial.params.items()} == {k: overrides[k] for k in trial.params}
        assert trial.value == pytest.approx(_best_val(run), rel=1e-12)  # train() returned the best validation metric
    best = yaml.safe_load((tmp_path / "b" / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(t.value for t in trials))


@needs["hydra_optuna_sweeper"]
@pytest.mark.filterwarnings("ignore:Deprecated API features detected")
def test_a_diverging_optuna_trial_is_recorded_as_the_worst_value_and_the_study_goes_on(tmp_path):
    import optuna
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    r = run_cli("train", "-m", "hparams_search=maml_movielens", *QUICK, f"hydra.sweeper.storage={db}",
                "hydra.sweeper.study_name=diverges", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.seed=0",
                "data.amp_min=1e30", "data.amp_max=1e30", f"hydra.sweep.dir={tmp_path}/s", cwd=tmp_path)  # y^2 overflows
    assert r.returncode == 1, r.stderr[-3000:]
    assert "metarec: error: the loss became" in r.stderr and "2 job(s) of the sweep failed" in r.stderr
    trials = optuna.load_study(study_name="diverges", storage=db).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all(t.value == float("inf") for t in trials)  # minimize: the worst value, not nan
    for run in _runs(tmp_path / "s").values():
        assert read_json(run / "status.json")["status"] != "finished"


def test_hparams_search_preset_is_an_optuna_study_of_maml_on_movielens(tmp_path):
    r = run_cli("train", "hparams_search=maml_movielens", "--cfg", "all", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = yaml.safe_load(r.stdout)
    sweeper = cfg["hydra"]["sweeper"]
    assert sweeper["_target_"].endswith("OptunaSweeper") and sweeper["direction"] == "minimize"
    assert sweeper["storage"].startswith("sqlite:///") and sweeper["study_name"] == "maml_movielens"
    assert set(sweeper["params"]) == {"algo.inner_lr", "algo.meta_lr", "algo.inner_steps", "trainer.meta_batch_size"}
    assert cfg["algo"]["name"] == "maml" and cfg["data"]["name"] == "movielens"
    assert cfg["hydra"]["sweep"]["dir"] == "outputs/multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}"
    assert cfg["hydra"]["sweep"]["subdir"] == "${hydra.job.num}"


def test_slurm_launcher_preset(tmp_path):
    r = run_cli("train", "hydra/launcher=slurm", "hydra.launcher.partition=a100", "--cfg", "hydra", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    launcher = yaml.safe_load(r.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["partition"] == "a100"
    assert launcher["gpus_per_node"] == 1 and launcher["timeout_min"] > 0
    assert launcher["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"


# TensorBoard (trainer.tensorboard=true): the same scalars as metrics.jsonl, under RUN/tensorboard/.

class _Writer:
    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.flushes = log_dir, [], 0

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        self.flushes += 1


def test_run_folder_writes_each_metrics_row_as_tensorboard_scalars(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=_Writer))
    run = RunFolder(tmp_path, tensorboard=True)
    run.metrics({"step": 20, "split": "train", "loss": 0.5, "tasks_per_s": 900.0})
    run.metrics({"step": 20, "split": "val", "mae": 0.8, "ndcg@3": 0.7})
    assert run.tensorboard.log_dir == str(tmp_path / "tensorboard") and run.tensorboard.flushes == 2
    assert run.tensorboard.scalars == [("train/loss", 0.5, 20), ("train/tasks_per_s", 900.0, 20),
                                       ("val/mae", 0.8, 20), ("val/ndcg@3", 0.7, 20)]


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as without tensorboard
    with pytest.raises(UserError, match=r"trainer.tensorboard=true needs the tensorboard package: pip install"):
        RunFolder(tmp_path, tensorboard=True)


def test_cli_tensorboard_without_the_package_is_one_line(tmp_path):
    hidden = tmp_path / "hide" / "tensorboard"  # first on the path: `import tensorboard` fails as if it were absent
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'tensorboard'\", name='tensorboard')\n")
    r = run_cli("train", *QUICK, "trainer.tensorboard=true", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path,
                env={"PYTHONPATH": str(hidden.parent)})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith("metarec: error")] == [
        "metarec: error: trainer.tensorboard=true needs the tensorboard package: pip install 'metarec[tensorboard]' "
        "(or pip install tensorboard), or leave trainer.tensorboard=false"]


@pytest.mark.slow
def test_cli_tensorboard_events_match_metrics_jsonl(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "run"
    r = run_cli("train", *QUICK, "trainer.tensorboard=true", f"hydra.run.dir={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = {(f"{row['split']}/{k}", row["step"]): v for row in rows for k, v in row.items() if k not in ("step", "split")}
    got = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    assert got.keys() == expected.keys()
    assert all(got[k] == pytest.approx(v, rel=1e-6) for k, v in expected.items())
