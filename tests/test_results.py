"""metarec.reporting.results on small generated eval.json files: aggregation over seeds, the best meta-learner by
validation, paired per-task differences combined over seeds (checked against hand-computed numbers)."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import read_until

from metarec.reporting import results
from metarec.reporting import runs as run_folders
from metarec.config.compose import compose_plain
from metarec.errors import UserError
from metarec.reporting.results_page import SeedRun, combine, mean_ci, summarize, targets

# per seed: per-task MAE on user_cold (identical tasks for every method of a seed)
MAML = {0: [0.7, 0.8, 0.9], 1: [0.6, 0.7, 0.8, 0.9]}
PRETRAIN = {0: [0.8, 0.8, 1.0], 1: [0.7, 0.7, 0.9, 1.1]}
REPTILE = {0: [0.5, 0.5, 0.5], 1: [0.5, 0.5, 0.5, 0.5]}  # best on test, worse on validation
BIAS = {0: [0.75, 0.85, 0.95], 1: [0.6, 0.8, 0.8, 1.0]}
USER_MEAN = {0: [0.9, 0.9, 0.9], 1: [0.9, 0.9, 0.9, 0.9]}
VAL = {"maml": 0.78, "pretrain": 0.77, "reptile": 0.80}  # pretrain is best on validation, but no meta-learner


@pytest.fixture(autouse=True)
def small_states_allowed(monkeypatch):
    """These generated states hold 3-4 tasks; a real page refuses fewer than 30 (test_anyones_data.py)."""
    monkeypatch.setattr("metarec.data.states.MIN_TASKS", 1)


def mean(v):
    return sum(v) / len(v)


def state(mae: list[float], seed: int, ndcg: float = 0.8) -> dict:
    floors = {"bias": BIAS[seed], "user_mean": USER_MEAN[seed], "global_mean": [1.0] * len(mae)}
    doc = {"n_tasks": len(mae), "headline_step": "1",
           "steps": {"0": {"mae": 9.0, "ndcg@3": 0.0, "ndcg_lin@3": 0.0},
                     "1": {"mae": mean(mae), "mae_ci": 0.01, "ndcg@3": ndcg, "ndcg_lin@3": ndcg + 0.1}},
           "per_task": {"0": {"mae": [9.0] * len(mae), "ndcg@3": [0.0] * len(mae)},
                        "1": {"mae": mae, "ndcg@3": [ndcg] * len(mae)}},
           "floors": {name: {"mae": mean(v), "ndcg@3": 0.7, "ndcg_lin@3": 0.85} for name, v in floors.items()},
           "floors_per_task": {name: {"mae": v, "ndcg@3": [0.7] * len(v)} for name, v in floors.items()}}
    doc["floors"]["random"] = {"ndcg@3": 0.6, "ndcg_lin@3": 0.8}
    doc["floors_per_task"]["random"] = {"ndcg@3": [0.6] * len(mae)}
    return doc


def runs() -> list[SeedRun]:
    out = []
    for name, values in (("maml", MAML), ("pretrain", PRETRAIN), ("reptile", REPTILE)):
        for seed in (0, 1):
            out.append(SeedRun(name, seed, {"user_cold": state(values[seed], seed)}, VAL[name] + seed / 100))
    return out


def runs_with_floor(state_name: str, floor: str, ndcg: float, names: tuple[str, str, str]) -> list[SeedRun]:
    """runs() in state `state_name`, with names for MAML's, PRETRAIN's and REPTILE's values, and the
    floor `floor` holding the bias floor's per-task MAE."""
    out = []
    for name, values in zip(names, (MAML, PRETRAIN, REPTILE)):
        for seed in (0, 1):
            doc = state(values[seed], seed)
            doc["floors_per_task"][floor] = {"mae": BIAS[seed], "ndcg@3": [ndcg] * len(BIAS[seed])}
            doc["floors"][floor] = {"mae": mean(BIAS[seed]), "ndcg@3": ndcg, "ndcg_lin@3": 0.85}
            out.append(SeedRun(name, seed, {state_name: doc}, VAL.get(name, 0.8) + seed / 100))
    return out


def test_paired_difference_combined_over_seeds_by_hand():
    s = summarize(runs())
    assert s["best"] == "maml"  # chosen by validation MAE among meta-learners, not by test MAE (reptile)
    comp = s["comparisons"]["user_cold"]
    # seed 0: d = [-.1, 0, -.1], mean -1/15, sd .057735, SE .033333; seed 1: d = [-.1, 0, -.1, -.2], mean -.1, SE .040825
    d, se = comp["mae vs pretrain"]
    assert d == pytest.approx(-0.083333, abs=1e-6)
    assert se == pytest.approx(math.sqrt(0.0333333 ** 2 + 0.0408248 ** 2) / 2, abs=1e-6)
    assert se == pytest.approx(0.026352, abs=1e-6)
    # against the bias floor: seed 0 d = -.05 each (SE 0); seed 1 d = [0, -.1, 0, -.1], mean -.05, SE .028868
    d, se = comp["mae vs bias"]
    assert d == pytest.approx(-0.05)
    assert se == pytest.approx(0.0288675 / 2, abs=1e-6)
    assert comp["best_floor"] == "bias"  # lowest mean MAE among the floors (bias .86 vs user_mean .90)
    d, se = comp["ndcg@3 vs random"]
    assert d == pytest.approx(0.2) and se == pytest.approx(0.0)


def test_table_means_and_t_intervals_over_seeds():
    s = summarize(runs())
    row = s["table"]["user_cold"]["maml"]
    m0, m1 = mean(MAML[0]), mean(MAML[1])
    assert row["mae"][0] == pytest.approx((m0 + m1) / 2)
    # two seeds: t(0.975, 1 df) = 12.706 times stdev / sqrt(2) = 12.706 * |m0 - m1| / 2
    assert row["mae"][1] == pytest.approx(12.706 * abs(m0 - m1) / 2)
    assert row["ndcg_lin@3"][0] == pytest.approx(0.9)
    floor = s["table"]["user_cold"]["floor: bias"]
    assert floor["mae"][0] == pytest.approx((mean(BIAS[0]) + mean(BIAS[1])) / 2)
    assert "mae" not in s["table"]["user_cold"]["floor: random"]
    assert s["table"]["user_cold"]["floor: random"]["ndcg@3"][0] == pytest.approx(0.6)
    assert s["val_mae"]["maml"][0] == pytest.approx(0.785)


def test_helpers_by_hand():
    assert combine([(-0.1, 0.03), (0.1, 0.04)]) == pytest.approx((0.0, 0.025))
    m, ci = mean_ci([0.7, 0.8, 0.9])
    assert m == pytest.approx(0.8) and ci == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert math.isnan(mean_ci([0.7])[1])


def test_targets_say_reached_or_not_with_numbers():
    checks = {what: (ok, numbers) for what, ok, numbers in targets(summarize(runs()))}
    ok, numbers = checks["user_cold: MAE of maml below pretrain by more than 2 SE"]
    assert ok and "-0.0833 ± 0.0264" in numbers  # -0.083 < -2 * 0.026
    ok, _ = checks["user_cold: MAE of maml below bias by more than 2 SE"]
    assert ok  # -0.05 < -2 * 0.0144
    ok, _ = checks["user_cold: nDCG@3 (2^r-1) of maml above random order by more than 0.1"]
    assert ok
    ok, numbers = checks["user_cold: MAE of maml below the best floor (bias) by more than 2 SE"]
    assert ok and "-0.0500 ± 0.0144" in numbers


def test_mismatched_tasks_are_refused():
    bad = runs()
    bad[2].states["user_cold"]["per_task"]["1"]["mae"] = [0.8, 0.8]  # pretrain seed 0 with 2 tasks
    with pytest.raises(ValueError, match="not the same tasks"):
        summarize(bad)


def write_run(folder: Path, run: SeedRun) -> None:
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps({"states": run.states}))
    rows = [{"step": 100, "split": "val", "mae": run.best_val + 0.05}, {"step": 200, "split": "train", "loss": 0.1},
            {"step": 200, "split": "val", "mae": run.best_val}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_only_writes_the_page_from_run_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(results, "METHODS", {"maml": ["experiment=melu_ml100k"], "pretrain": ["experiment=melu_ml100k_pretrain"],
                                             "reptile": ["experiment=melu_ml100k_reptile"]})
    monkeypatch.setattr(results, "preset_hparams", lambda m, data="ml-100k": f"preset of {m}")
    for run in runs():
        write_run(results.folder_of(tmp_path / "runs", run.method, run.seed), run)
    doc = tmp_path / "docs" / "results.md"
    assert results.main(["--report-only", "--out", str(tmp_path / "runs"), "--doc", str(doc), "--seeds", "0", "1"]) == 0
    text = doc.read_text()
    assert "nDCG@3 (gain 2^r-1)" in text and "nDCG@3 (gain linear)" in text
    assert "maml (best meta-learner)" in text and "| floor: bias_transductive" not in text
    assert "-0.0833 ± 0.0264" in text and "preset of reptile" in text and "Protocol: users 60/20/20" in text
    assert json.loads((tmp_path / "runs" / "summary.json").read_text())["best"] == "maml"
    for run in runs():  # each run records the copy of the data it read
        info = results.folder_of(tmp_path / "runs", run.method, run.seed) / "run_info.json"
        info.write_text(json.dumps({"data_fingerprint": "ab" * 32}))
    assert results.main(["--report-only", "--out", str(tmp_path / "runs"), "--doc", str(doc), "--seeds", "0", "1"]) == 0
    assert "fingerprint `abababababababab…`" in doc.read_text()
    info.write_text(json.dumps({"data_fingerprint": "cd" * 32}))  # one run read another copy: no page from a mix
    assert results.main(["--report-only", "--out", str(tmp_path / "runs"), "--doc", str(doc), "--seeds", "0", "1"]) == 1
    assert "read 2 different copies of the data (run_info.json fingerprints abababababab, cdcdcdcdcdcd)" in capsys.readouterr().err


def test_a_finished_run_is_reused_only_with_the_same_resolved_config(tmp_path):
    overrides = results.run_overrides("maml", 1, "/data/ml-100k", 1)
    assert overrides[:2] == ["experiment=melu_ml100k", "seed=1"] and "data.root=/data/ml-100k" in overrides
    folder = tmp_path / "maml" / "seed1"
    (folder / ".hydra").mkdir(parents=True)
    config = compose_plain(overrides)  # what .hydra/config.yaml of a run holds
    assert config["data"]["split_seed"] is None and config["seed"] == 1  # the split follows the seed
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "status.json").write_text(json.dumps({"status": "finished"}))
    assert not results.finished(folder, overrides)  # no eval.json
    (folder / "eval.json").write_text("{}")
    assert results.finished(folder, overrides)
    config["algo"]["inner_lr"] = 0.5  # a preset edited since: train again
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    assert not results.finished(folder, overrides)


def test_a_key_added_to_the_schema_after_a_run_keeps_it_only_at_the_old_behaviour():
    composed = compose_plain(results.run_overrides("maml", 0, "/data/ml-100k", 1))
    recorded = {**composed, "data": {k: v for k, v in composed["data"].items() if k != "trans_shares"}}
    assert composed["data"]["trans_shares"] == [1.0] and run_folders.same_config(recorded, composed)
    thinner = {**composed, "data": {**composed["data"], "trans_shares": [0.2, 1.0]}}  # a preset that now thins
    assert not run_folders.same_config(recorded, thinner)
    assert not run_folders.same_config({**recorded, "data": {**recorded["data"], "trans_reg": 3.0}}, composed)
    # the trackers' keys (metarec/run/loggers.py) came later too: a run without them is reused
    before = {**composed, "trainer": {k: v for k, v in composed["trainer"].items() if k not in ("loggers", "tracking_experiment", "tracking_uri")}}
    assert composed["trainer"]["loggers"] == [] and run_folders.same_config(before, composed)


# ---- the page's lists against the registries and the schemas ----------------------------------------------

def algorithm_of(method: str, data: str = "ml-100k") -> str:
    return results.preset(tuple(results.presets_of(data)[method])).algo.name


def test_every_algorithm_has_a_row_under_its_registry_name_and_every_row_runs_one():
    """METHODS chooses the page's presets; its names follow metarec.algos.ALGOS: each algorithm has a row
    named NAME (or NAME (variant)) that runs it, and every row runs an algorithm of the registry."""
    from metarec.algos import ALGOS
    runs = {m: algorithm_of(m) for m in results.METHODS}
    assert set(runs.values()) <= set(ALGOS)
    for method, algo in runs.items():
        named = method.split(" (")[0]
        assert named not in ALGOS or named == algo, (method, algo)
    missing = [a for a in ALGOS if not any(m.split(" (")[0] == a for m in runs)]
    assert not missing, f"no row of the results page runs {missing} under its registry name: add it to METHODS"


def test_every_preset_of_a_page_is_on_it_and_ml1m_follows_the_naming_rule():
    from importlib import resources
    folder = resources.files("metarec.conf") / "experiment"
    for data, prefix in (("ml-100k", "melu_ml100k"), ("ml-1m", "melu_ml1m")):
        files = {f"experiment={p.name.removesuffix('.yaml')}" for p in folder.iterdir() if p.name.startswith(prefix)}
        assert files == {o[0] for o in results.presets_of(data).values()}, data
    assert list(results.ML1M_METHODS) == [m for m in results.METHODS if m in results.ML1M_METHODS]
    assert all(algorithm_of(m, "ml-1m") == algorithm_of(m) for m in results.ML1M_METHODS)


def test_the_pages_choices_name_its_methods_and_the_schemas_keys():
    import dataclasses

    from metarec.config.schema import EvalConfig, MovieLensConfig, TrainerConfig
    from metarec.reporting.catalog_page import CATALOG_METHODS
    from metarec.reporting.published import PUBLISHED
    from metarec.reporting.results_page import BASELINE, NEW_USER_BARS
    bars = [b for b in NEW_USER_BARS if not b.startswith("floor: ")]
    assert set(bars) | {BASELINE} | set(CATALOG_METHODS) <= set(results.METHODS)
    assert all(set(methods) <= set(results.presets_of(variant)) for variant, methods in PUBLISHED.items())
    schemas = {"data": MovieLensConfig, "eval": EvalConfig, "trainer": TrainerConfig}
    fields = {g: {f.name: f for f in dataclasses.fields(s)} for g, s in schemas.items()}
    for group, keys in results.SHOWN_KEYS.items():
        assert set(keys) <= set(fields[group]), group
    for (group, key), value in run_folders.LATER_KEYS.items():  # a later key counts at its schema default
        f = fields[group][key]
        assert value == (f.default if f.default is not dataclasses.MISSING else f.default_factory()), (group, key)


def test_the_page_names_the_protocol_and_refuses_methods_on_other_tasks(tmp_path, monkeypatch, capsys):
    line = results.protocol(list(results.METHODS))  # the real presets share one protocol
    assert line.startswith("Protocol: users 60/20/20 meta-train / validation / test") and "data.heavy_users=true" in line
    assert "except for melu_paper, which drop them as MeLU did (the same evaluation tasks)" in line
    monkeypatch.setitem(results.METHODS, "maml", ["experiment=melu_ml100k", "data.split=[0.7,0.1,0.2]"])
    with pytest.raises(UserError, match="maml: split=.0.7, 0.1, 0.2. ratings=13-100"):
        results.protocol(list(results.METHODS))
    assert results.main(["--report-only", "--out", str(tmp_path / "runs"), "--doc", str(tmp_path / "r.md")]) == 1
    assert "split users or filter tasks differently" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()


def test_ml1m_presets_share_one_protocol_with_every_meta_train_rating(capsys):
    line = results.protocol(list(results.ML1M_METHODS), "ml-1m")
    assert line.startswith("Protocol: users 70/10/20 meta-train / validation / test") and "data.heavy_users=true" in line
    assert "title is after 1997" in line and "title is after 1996" in results.protocol(["maml"])
    assert results.run_overrides("ridge", 2, "/d/ml-1m", 1, "ml-1m")[:3] == [
        "experiment=melu_ml1m_ridge", "seed=2", "data.root=/d/ml-1m"]
    args = results.parse(["--data", "ml-1m"])
    # the first three as before; methods added later (melu_paper, mamo, ...) follow them
    assert (args.methods[:3], str(args.out), str(args.doc)) == (["maml", "ridge", "pretrain"], "outputs/results-ml1m",
                                                                "docs/results-ml1m.md")
    assert args.methods == list(results.ML1M_METHODS) and {"melu_paper", "mamo"} <= set(args.methods)
    with pytest.raises(SystemExit):
        results.parse(["--data", "ml-1m", "--methods", "reptile"])
    assert "ml-1m has maml, ridge, pretrain" in capsys.readouterr().err


def test_the_page_names_the_data_copy_without_this_machines_paths(tmp_path, monkeypatch):
    assert results.shown_command(["--report-only", "--data-root", "/work/shared/data/ml-100k"], "ml-100k") == \
        "python -m metarec.reporting.results --data-root PATH/ml-100k"
    assert results.shown_command(["--data-root=/x/ml-100k", "--seeds", "0", "--out", "/tmp/r"], None) == \
        "python -m metarec.reporting.results --seeds 0 --out PATH/r"
    # docs/results*.md's lines around the numbers are what the renderer prints for the runs that made them
    for doc, variant, argv in (("results.md", "ml-100k", []), ("results-ml1m.md", "ml-1m", ["--data", "ml-1m"])):
        lines = (Path(__file__).parents[1] / "docs" / doc).read_text().splitlines()
        line = next(ln for ln in lines if ln.startswith("Generated by"))
        took = re.search(r"took ([0-9.]+) min wall time(?: over (\d+) invocations)?", line)  # absent: some runs unrecorded
        wall = (float(took.group(1)) * 60, int(took.group(2) or 1)) if took else None
        fingerprint = re.search(r"fingerprint `([0-9a-f]{16})…`", line).group(1)
        command = re.search(r"\(`(python -m metarec.reporting.results [^`]*)`\)", line).group(1)  # as shown_command printed it
        assert command.startswith(results.shown_command(["--data-root", f"/work/shared/data/{variant}", *argv], variant))
        page = results.render(summarize(runs()), wall, {"maml": "x"}, command, fingerprint + "0" * 48, "",
                              variant, variant)
        assert line in page.splitlines() and "/work" not in line and "/tmp" not in line
        assert next(ln for ln in lines if ln.startswith("Chosen on validation users")) in page.splitlines()
    # --report-only on run folders that recorded an absolute data.root: the folder's name, no path
    monkeypatch.setattr(results, "METHODS", {"maml": ["experiment=melu_ml100k"], "pretrain": ["experiment=melu_ml100k_pretrain"],
                                             "reptile": ["experiment=melu_ml100k_reptile"]})
    monkeypatch.setattr(results, "preset_hparams", lambda m, data="ml-100k": f"preset of {m}")
    for run in runs():
        folder = results.folder_of(tmp_path / "runs", run.method, run.seed)
        write_run(folder, run)
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"data": {"root": str(tmp_path / "data" / "ml-100k")}}))
        (folder / "run_info.json").write_text(json.dumps({"data_fingerprint": "ab" * 32}))
    doc = tmp_path / "docs" / "results.md"
    assert results.main(["--report-only", "--out", str(tmp_path / "runs"), "--doc", str(doc), "--seeds", "0", "1"]) == 0
    text = doc.read_text()
    assert str(tmp_path) not in text
    assert "(`python -m metarec.reporting.results --data-root PATH/ml-100k --out PATH/runs --doc PATH/results.md --seeds 0 1`)" in text
    assert "(folder `ml-100k`, SHA-256 fingerprint `abababababababab…` in each run_info.json)" in text


def test_the_wall_time_sums_the_invocations_that_trained_the_pages_runs(tmp_path):
    args = results.parse(["--out", str(tmp_path), "--methods", "maml", "ridge", "--seeds", "0", "1"])
    maml = [str(results.folder_of(tmp_path, "maml", s)) for s in (0, 1)]
    ridge = [str(results.folder_of(tmp_path, "ridge", s)) for s in (0, 1)]
    assert results.training_wall(args) is None  # nothing recorded
    (tmp_path / "timing.json").write_text(json.dumps({"wall_s": 9.0, "runs": 4}))  # the older form names no runs
    assert results.training_wall(args) is None
    results.record_timing(args, maml + ridge, 100.0)
    assert results.training_wall(args) == (100.0, 1)
    results.record_timing(args, ridge[:1], 30.0)  # one run trained again: both invocations made the page
    assert results.training_wall(args) == (130.0, 2)
    results.record_timing(args, maml + ridge[1:], 50.0)  # the first invocation's runs are all newer now
    assert results.training_wall(args) == (80.0, 2)
    assert json.loads((tmp_path / "timing.json").read_text())["invocations"][0]["runs"] == []
    page = results.render(summarize(runs()), (80.0 * 60, 2), {"maml": "x"}, "cmd")
    assert "took 80.0 min wall time over 2 invocations (each trained the runs that were missing)." in page


def test_new_items_table_is_every_method_against_bias_transductive_and_marks_transductive_rows():
    from metarec.reporting.results_page import render
    s = summarize(runs_with_floor("item_cold", "bias_transductive", 0.75, ("maml", "pretrain", "reptile")))
    d, se = s["new_items"]["item_cold"]["maml"]["mae"]  # the same numbers as maml against the bias floor above
    assert d == pytest.approx(-0.05) and se == pytest.approx(0.0288675 / 2, abs=1e-6)
    d, se = s["new_items"]["item_cold"]["reptile"]["ndcg@3"]
    assert d == pytest.approx(0.05) and se == pytest.approx(0.0)
    s["transductive"] = ["reptile"]
    page = render(s, None, {}, "python -m metarec.reporting.results")
    assert "| item_cold | reptile (transductive) | " in page and "| item_cold | maml | " in page
    assert "| floor: bias_transductive (transductive) |" in page


def test_new_users_table_is_every_method_against_mf_foldin_ridge_maml_and_melu_paper():
    from metarec.reporting.results_page import render
    s = summarize(runs_with_floor("user_cold", "mf_foldin", 0.7, ("maml", "pretrain", "ridge")))  # ridge: reptile's values
    rows = s["new_users"]
    assert set(rows["maml"]) == {"floor: mf_foldin", "ridge"}  # no melu_paper run, and not against itself
    d, se = rows["maml"]["floor: mf_foldin"]  # the numbers of maml against the bias floor (same per-task values)
    assert d == pytest.approx(-0.05) and se == pytest.approx(0.0288675 / 2, abs=1e-6)
    # pretrain - ridge: seed 0 d = [.3, .3, .5], mean .366667, SE .066667; seed 1 d = [.2, .2, .4, .6], mean .35, SE .095743
    d, se = rows["pretrain"]["ridge"]
    assert d == pytest.approx((0.366667 + 0.35) / 2, abs=1e-6)
    assert se == pytest.approx(math.sqrt(0.0666667 ** 2 + 0.0957427 ** 2) / 2, abs=1e-6)
    page = render(s, None, {}, "python -m metarec.reporting.results")
    assert "| method | vs floor: mf_foldin | vs ridge |" in page
    assert "| ridge | " in page and "| maml | -0.0500 ± 0.0144 (-3.5) | " in page


def test_a_second_invocation_on_the_same_results_folder_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "runs"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; from metarec.run.run_lock "
                               "import RunLock; RunLock.take(Path(sys.argv[1]), 'results'); print('locked', flush=True); "
                               "time.sleep(600)", str(out)], stdout=subprocess.PIPE)
    try:
        read_until(holder.stdout, b"locked\n", timeout=120)
        assert results.main(["--report-only", "--out", str(out), "--doc", str(tmp_path / "r.md")]) == 1
        err = capsys.readouterr().err
        assert f"{out} is in use by another metarec results (pid {holder.pid} " in err and "choose another --out" in err
        assert not (tmp_path / "r.md").exists()
    finally:
        holder.kill()
        holder.wait()


def test_the_training_time_is_recorded_even_when_the_page_cannot_be_written(tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs"
    trained = [str(results.folder_of(out, "maml", 0))]
    monkeypatch.setattr(results, "train_missing", lambda args: trained)  # trained, then a run folder is unreadable
    assert results.main(["--out", str(out), "--doc", str(tmp_path / "r.md"), "--seeds", "0", "--methods", "maml"]) == 1
    assert "no eval.json" in capsys.readouterr().err
    invocations = json.loads((out / "timing.json").read_text())["invocations"]
    assert [i["runs"] for i in invocations] == [trained]


def test_each_state_has_an_inductive_and_a_transductive_table_with_its_own_floors_by_hand():
    from metarec.reporting.results_page import render
    runs = runs_with_floor("item_cold", "bias_transductive", 0.75, ("maml", "pretrain", "reptile"))
    for r in runs:  # the classes as each run's eval.json recorded them
        r.states["item_cold"]["input_class"] = "transductive" if r.method == "reptile" else "inductive"
        r.states["item_cold"]["floor_classes"] = {"bias": "inductive", "bias_transductive": "transductive",
                                                  "user_mean": "inductive", "global_mean": "inductive"}
    s = summarize(runs)
    assert s["comparisons"]["item_cold"]["best_floor"] == "bias"  # maml (best, inductive) meets its class's floors
    for r in runs:
        r.states["item_cold"]["floors"]["bias_transductive"]["mae"] = 0.1  # the lowest floor, of the other class
    assert summarize(runs)["comparisons"]["item_cold"]["best_floor"] == "bias"
    ind, trans = s["classes"]["item_cold"]["inductive"], s["classes"]["item_cold"]["transductive"]
    assert ind["methods"] == ["maml", "pretrain"] and ind["floors"] == ["bias"] and ind["best"] == "maml"
    assert trans["methods"] == ["reptile"] and trans["floors"] == ["bias_transductive"] and trans["best"] == "reptile"
    # maml - bias: seed 0 d = -.05 each (SE 0); seed 1 d = [0, -.1, 0, -.1], mean -.05, SE .028868
    assert ind["mae"] == pytest.approx((-0.05, 0.0288675 / 2), abs=1e-6)
    # reptile - bias_transductive: seed 0 d = [-.25, -.35, -.45], SE .057735; seed 1 [-.1, -.3, -.3, -.5], SE .081650
    assert trans["mae"] == pytest.approx((-0.325, 0.05), abs=1e-6)
    assert s["transductive"] == ["reptile"]
    page = render(s, None, {}, "python -m metarec.reporting.results")
    assert ("**item_cold, inductive**: maml wins by 3.5 SE: maml (the inductive meta-learner best on validation) "
            "minus bias (the best inductive floor), MAE -0.0500 ± 0.0144.") in page
    assert "**item_cold, transductive**: reptile wins by 6.5 SE" in page
    table = page.split("### item_cold: transductive")[1].split("\n## ")[0]  # the last table of the section
    assert "| reptile (best on validation) |" in table and "| floor: bias_transductive |" in table
    assert "maml" not in table and "| floor: bias |" not in table
    assert s["phases"] == {} and "Two-phase rows" not in page
    for r in runs:
        if r.method == "reptile":
            r.states["item_cold"]["checkpoint_phase"] = f"networks (their step {10 * (r.seed + 1)})"
    page = render(summarize(runs), None, {}, "cmd")
    assert "reptile: networks (their step 10), networks (their step 20)." in page


def test_a_run_that_recorded_no_input_class_is_in_neither_table():
    from metarec.reporting.results_page import render
    runs = runs_with_floor("item_cold", "bias_transductive", 0.75, ("maml", "pretrain", "reptile"))
    for r in runs:
        if r.method != "reptile":
            r.states["item_cold"]["input_class"] = "inductive"
    s = summarize(runs)
    assert s["classes"]["item_cold"]["transductive"]["methods"] == []
    assert "Not in these tables (their eval.json records no input class: train them again): reptile." in render(
        s, None, {}, "cmd")
