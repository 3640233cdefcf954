"""`metarec bench`: the JSON it writes and the synthetic ml-1m it builds (no timing assertions: speed lives in the bench)."""
import json

import numpy as np
from conftest import ML100K, needs_ml100k

from metarec.bench.speed import HEADER, format_row, main, write_synthetic_ml1m
from metarec.data.movielens_io import read_movielens

ROW_KEYS = {"algo", "meta_batch", "inner_steps", "first_order", "impl", "tasks_per_s", "peak_rss_mb"}


@needs_ml100k()
def test_quick_bench_writes_rows_for_every_impl(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--quick", "--threads", "1", "--repeats", "1", "--min-time", "0", "--data-root", str(ML100K), "--out", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert rows and all(set(r) == ROW_KEYS for r in rows)
    assert {r["impl"] for r in rows} == {"reference", "engine", "supervised"}
    assert {(r["algo"], r["first_order"]) for r in rows} == {("maml", False), ("maml", True)}
    for r in rows:
        assert isinstance(r["meta_batch"], int) and isinstance(r["inner_steps"], int) and isinstance(r["first_order"], bool)
        assert r["tasks_per_s"] > 0 and r["peak_rss_mb"] > 0
    assert result["machine"]["threads"] >= 1
    assert result["evaluation"]["state"] == "user_cold" and result["evaluation"]["tasks"] > 0
    printed = capsys.readouterr().out
    assert HEADER in printed and "eng/ref" in printed


def test_the_default_data_root_is_the_shared_ml100k_beside_the_checkout():
    from metarec.bench.speed import SHARED_ML100K
    assert SHARED_ML100K == ML100K


def test_table_row_shows_the_ratios():
    rows = [{"algo": "maml", "meta_batch": 32, "inner_steps": 5, "first_order": False, "impl": impl, "tasks_per_s": v,
             "peak_rss_mb": 1.0} for impl, v in (("reference", 100.0), ("engine", 1000.0), ("supervised", 4000.0))]
    line = format_row(rows)
    assert "10.0x" in line and "4.0x" in line and "second" in line


def test_synthetic_ml1m_reads_as_ml1m(tmp_path):
    write_synthetic_ml1m(tmp_path, users=50, items=80, ratings=2000)
    raw = read_movielens(tmp_path)
    assert len(raw.rating) == 2000 and len(raw.user_gender) == 50 and len(raw.item_year) == 80
    assert np.bincount(raw.rating_user).min() >= 20
    assert {g for gs in raw.item_genres for g in gs} <= set(
        "Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy Film-Noir Horror "
        "Musical Mystery Romance Sci-Fi Thriller War Western".split())


def test_device_cuda_without_a_gpu_is_one_clear_line(capsys):
    import pytest
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA (tests/test_cuda.py runs there)")
    assert main(["--quick", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metarec: error: device=cuda, but this torch sees no CUDA GPU")


def test_grid_has_a_row_for_every_registered_algorithm():
    from metarec.algos import ALGOS
    from metarec.bench.rows import grid
    rows = grid(list(ALGOS))
    assert {name for name, _ in rows} == set(ALGOS)
    assert ("maml", False) in rows and ("maml", True) in rows  # maml in both orders, the rest in their config's
    from metarec.bench.rows import BOTH_ORDERS
    from metarec.bench.speed import QUICK
    assert set(BOTH_ORDERS) | set(QUICK) <= set(ALGOS)  # the bench's choices are names of the registry


def test_table_row_without_a_reference_says_so():
    rows = [{"algo": "ridge", "meta_batch": 32, "inner_steps": None, "first_order": None, "impl": impl, "tasks_per_s": v,
             "peak_rss_mb": 1.0, "note": "no per-task reference in the package"}
            for impl, v in (("engine", 200.0), ("supervised", 400.0))]
    line = format_row(rows)
    assert line.startswith("ridge") and "2.0x" in line and "no per-task reference" in line


@needs_ml100k()
def test_every_algorithm_fits_the_bench_data_with_what_it_declares():
    """mamo gets its own model, the item-task learners their item ids; each has a reference step or a note."""
    import torch

    from metarec.bench.rows import build_algo, fitting_overrides, reference_step
    from metarec.config.compose import compose
    from metarec.data import build_source
    cfg = compose(["device=cpu", f"data.root={ML100K}"])
    source = build_source(cfg.data, torch.device("cpu"), cfg.seed, progress=False)
    assert fitting_overrides("mamo", source) == ["model=mamo"]
    assert fitting_overrides("maml", source) == []
    for name in ("ridge", "pretrain", "maml", "reptile"):
        algo = build_algo(compose(["device=cpu", f"data.root={ML100K}", f"algo={name}"]), source)
        step, note = reference_step(algo)
        assert (step is None) == (name in ("ridge", "pretrain")) and (note != "") == (step is None)
