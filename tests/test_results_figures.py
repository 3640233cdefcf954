"""The results pages' figures, drawn from small fixtures of run folders: each file is a PNG and the
series it plotted are checked against numbers worked out here (not pixels)."""
from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys

import pytest

from metarec.reporting import results, results_figures as rf
from metarec.errors import UserError

PNG = b"\x89PNG\r\n\x1a\n"
# per seed, per-task MAE on user_cold (identical tasks for every method of a seed)
FLOORS = {"bias": {0: [0.8, 0.9, 1.0], 1: [0.7, 0.8, 0.9, 1.0]},  # mean .875: the best inductive floor
          "user_mean": {0: [1.0, 1.0, 1.0], 1: [1.0, 1.0, 1.0, 1.0]},
          "bias_transductive": {0: [0.7, 0.8, 0.9], 1: [0.6, 0.8, 0.8, 0.9]}}  # mean .7875: the best transductive
METHODS = {"maml": {0: [0.7, 0.9, 0.9], 1: [0.6, 0.8, 0.8, 0.9]},
           "ridge_trans": {0: [0.7, 0.8, 0.8], 1: [0.6, 0.7, 0.8, 0.9]},  # transductive by the page's list
           "tanp": {0: [0.9, 0.9, 1.0], 1: [0.8, 0.8, 0.9, 1.0]},  # transductive by its eval.json
           "lwa": {0: [0.8, 0.8, 0.9], 1: [0.7, 0.8, 0.8, 0.9]}}  # in the page's list, but eval.json says inductive
EVAL_CLASS = {"tanp": "transductive", "lwa": "inductive"}
LISTED = {"ridge_trans", "lwa"}
# by support size: seed -> bucket -> MAE (seed 1 has no 6-10 bucket: its mean is seed 0's alone)
SUPPORT = {"maml": {0: {"3-5": 0.9, "6-10": 0.7}, 1: {"3-5": 0.8}}}
SUPPORT_FLOORS = {"bias": {0: {"3-5": 1.0, "6-10": 0.8}, 1: {"3-5": 0.9}},
                  "bias_transductive": {0: {"3-5": 0.95, "6-10": 0.75}, 1: {"3-5": 0.85}},
                  "user_mean": {0: {"3-5": 1.1, "6-10": 1.0}, 1: {"3-5": 1.2}}}


def state_doc(method: str, seed: int) -> dict:
    mae = METHODS[method][seed]
    doc = {"n_tasks": len(mae), "headline_step": "1", "steps": {"1": {"mae": statistics.fmean(mae), "ndcg@3": 0.8, "ndcg_lin@3": 0.9}},
           "per_task": {"1": {"mae": mae, "ndcg@3": [0.8] * len(mae)}},
           "floors": {f: {"mae": statistics.fmean(v[seed]), "ndcg@3": 0.7, "ndcg_lin@3": 0.8} for f, v in FLOORS.items()},
           "floors_per_task": {f: {"mae": v[seed], "ndcg@3": [0.7] * len(v[seed])} for f, v in FLOORS.items()}}
    doc["floors"]["random"] = {"ndcg@3": 0.6, "ndcg_lin@3": 0.7}  # the page's random-order nDCG (no MAE)
    doc["floors_per_task"]["random"] = {"ndcg@3": [0.6] * len(mae)}
    if method in EVAL_CLASS:
        doc["input_class"] = EVAL_CLASS[method]
    if method in SUPPORT:
        doc["by_support"] = [{"support": b, "n_tasks": 2, "method": {"mae": v, "ndcg@3": 1 - v / 2},
                              "floors": {f: {"mae": SUPPORT_FLOORS[f][seed][b], "ndcg@3": 0.5} for f in SUPPORT_FLOORS}}
                             for b, v in SUPPORT[method][seed].items()]
    return doc


def by_method(methods=tuple(METHODS)) -> dict[str, dict[int, dict]]:
    return {m: {s: {"user_cold": state_doc(m, s)} for s in (0, 1)} for m in methods}


def oracle(method: str, floor: str) -> tuple[float, float]:
    """Per seed the mean of the per-task differences and its SE (sample sd / sqrt n); over seeds the
    mean of the means and sqrt(sum SE^2) / n_seeds."""
    means, ses = [], []
    for seed in (0, 1):
        d = [a - b for a, b in zip(METHODS[method][seed], FLOORS[floor][seed])]
        means.append(sum(d) / len(d))
        ses.append(statistics.stdev(d) / math.sqrt(len(d)))
    return sum(means) / 2, math.sqrt(sum(se ** 2 for se in ses)) / 2


def test_each_method_against_the_best_floor_of_its_class_sorted(tmp_path):
    data = rf.floor_differences(by_method(), ["user_cold"], LISTED)
    rows = data["user_cold"]
    classes = {r["method"]: (r["class"], r["floor"]) for r in rows}
    assert classes == {"maml": ("inductive", "bias"), "ridge_trans": ("transductive", "bias_transductive"),
                       "tanp": ("transductive", "bias_transductive"), "lwa": ("inductive", "bias")}
    for r in rows:
        d, se = oracle(r["method"], r["floor"])
        assert r["diff"] == pytest.approx(d, abs=1e-12) and r["se"] == pytest.approx(se, abs=1e-12)
    assert [r["diff"] for r in rows] == sorted(r["diff"] for r in rows)
    assert [r["method"] for r in rows] == ["maml", "lwa", "ridge_trans", "tanp"]  # -.0708, -.05, -.0292, +.1
    png = rf.draw_floor_differences(data, tmp_path / "f" / "diffs.png")
    assert png.read_bytes()[:8] == PNG


def test_seeds_that_disagree_on_a_rows_class_are_refused():
    runs = by_method(("tanp",))
    runs["tanp"][1]["user_cold"]["input_class"] = "inductive"
    with pytest.raises(UserError, match="disagree on its input class"):
        rf.floor_differences(runs, ["user_cold"], set())
    runs["tanp"][1]["user_cold"]["input_class"] = runs["tanp"][0]["user_cold"]["input_class"] = "both"
    with pytest.raises(UserError, match="'both' is not one of inductive, transductive"):
        rf.floor_differences(runs, ["user_cold"], set())


def test_metrics_by_support_size_per_method_and_best_floors(tmp_path):
    data = rf.support_curves(by_method(("maml",)), ["user_cold"])
    entry = data["user_cold"]
    assert entry["buckets"] == ["3-5", "6-10"]
    expected = {"maml": [0.85, 0.7], "floor: bias": [0.95, 0.8], "floor: bias_transductive": [0.9, 0.75]}
    assert entry["mae"].keys() == expected.keys()  # user_mean is no best floor
    for name, values in expected.items():
        assert entry["mae"][name] == pytest.approx(values)
    assert entry["ndcg@3"]["maml"] == pytest.approx([1 - 0.85 / 2, 1 - 0.7 / 2])
    png = rf.draw_support_curves(data, tmp_path / "support.png")
    assert png.read_bytes()[:8] == PNG
    assert rf.support_curves(by_method(("tanp",)), ["user_cold"]) == {}  # no by_support: no figure
    assert rf.draw_support_curves({}, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


BENCH = {"machine": "test box", "date": "2026-12-07",
         "sizes": [{"ratings": 100000, "users": 943, "items": 1682,
                    "phases": {"read": {"seconds": 0.5, "peak_rss_mb": 200.0}, "train_step": {"seconds": 0.01, "peak_rss_mb": 300.0},
                               "factors": {"seconds": 0.0, "peak_rss_mb": 250.0}}},
                   {"ratings": 10000, "users": 100, "items": 300,  # out of order: plotted sorted by ratings
                    "phases": {"read": {"seconds": 0.05, "peak_rss_mb": 150.0}, "train_step": {"seconds": 0.008}}}]}


def test_scale_figure_plots_each_phase_against_ratings(tmp_path):
    png, series = rf.draw_scale(BENCH, tmp_path / "scale.png")
    assert png.read_bytes()[:8] == PNG
    assert series["seconds"] == {"read": [(1e4, 0.05), (1e5, 0.5)], "train_step": [(1e4, 0.008), (1e5, 0.01)]}  # 0 s: not on a log axis
    assert series["peak_rss_mb"] == {"read": [(1e4, 150.0), (1e5, 200.0)], "factors": [(1e5, 250.0)],
                                      "train_step": [(1e5, 300.0)]}
    assert list(series["peak_rss_mb"]) == ["read", "factors", "train_step"]  # the bench's phase order


def test_scale_command_draws_the_file_and_refuses_a_wrong_one_in_one_line(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(BENCH))
    out = tmp_path / "figs" / "scale.png"
    r = subprocess.run([sys.executable, "-m", "metarec.reporting.results_figures", "scale", str(bench), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and out.read_bytes()[:8] == PNG
    bench.write_text(json.dumps({"sizes": [{"users": 3}]}))
    r = subprocess.run([sys.executable, "-m", "metarec.reporting.results_figures", "scale", str(bench), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "metarec results_figures: error: each entry of the benchmark JSON's \"sizes\" needs \"ratings\" and "
        "\"phases\": give the file that `metarec bench --scale` wrote"]


def test_the_results_page_embeds_the_figures_it_draws(tmp_path, monkeypatch):
    monkeypatch.setattr("metarec.data.states.MIN_TASKS", 1)  # the fixture's states hold 3-4 tasks
    monkeypatch.setattr(results, "METHODS", {"maml": ["experiment=melu_ml100k"], "ridge_trans": ["experiment=melu_ml100k_trans"]})
    monkeypatch.setattr(results, "preset_hparams", lambda m, data="ml-100k": f"preset of {m}")
    for m, seeds in by_method(("maml", "ridge_trans")).items():
        for seed, states in seeds.items():
            folder = results.folder_of(tmp_path / "runs", m, seed)
            folder.mkdir(parents=True)
            (folder / "eval.json").write_text(json.dumps({"states": states}))
            (folder / "metrics.jsonl").write_text(json.dumps({"step": 10, "split": "val", "mae": 0.8}) + "\n")
    doc = tmp_path / "docs" / "results.md"
    assert results.main(["--report-only", "--out", str(tmp_path / "runs"), "--doc", str(doc), "--seeds", "0", "1"]) == 0
    text = doc.read_text()
    for name in ("floor_differences", "support_curves"):
        assert f"![{name}](figures/ml-100k/{name}.png)" in text
        assert (tmp_path / "docs" / "figures" / "ml-100k" / f"{name}.png").read_bytes()[:8] == PNG
