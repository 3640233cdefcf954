"""`metarec bench --scale` (metarec/bench/scale.py): the planted data sets read as atomic files, the sizes
and the growth per doubling by hand, and the installed command's JSON in the shape the figure reads."""
import json

import numpy as np
import pytest
from conftest import read_json, run_cli

from metarec.bench import scale as bench_scale
from metarec.config.compose import compose
from metarec.data.atomic import read_dataset


def test_a_planted_data_set_reads_as_atomic_files(tmp_path):
    shape = bench_scale.write_planted(tmp_path, 6000, seed=3)
    table = read_dataset(compose(["data=atomic", f"data.root={tmp_path}"]).data).table
    assert (len(table.rating), table.num_users, table.num_items) == (shape["ratings"], shape["users"], shape["items"])
    assert 4000 < shape["ratings"] < 12_000 and shape["users"] == 200 and shape["items"] == 300
    pairs = table.rating_user * table.num_items + table.rating_item
    assert len(np.unique(pairs)) == len(pairs) and set(np.unique(table.rating)) <= {1, 2, 3, 4, 5}


def test_sizes_parse_and_a_bad_one_is_refused():
    assert [bench_scale.parse_size(s) for s in ("0.1M", "1M", "10m", "250k", "5000")] == [100_000, 1_000_000,
                                                                                         10_000_000, 250_000, 5000]
    for bad in ("lots", "12"):
        with pytest.raises(Exception, match=bad):
            bench_scale.parse_size(bad)


def size(ratings, seconds):
    return {"ratings": ratings, "users": 1, "items": 1,
            "phases": {p: {"seconds": seconds[k], "peak_rss_mb": 100.0} for k, p in enumerate(bench_scale.PHASES)}}


def test_growth_per_doubling_by_hand():
    a, b = size(1000, [1, 1, 1, 1, 1, 1]), size(4000, [4, 16, 2, 1, 8, 4])  # two doublings
    assert [bench_scale.per_doubling(a, b, p) for p in bench_scale.PHASES] == pytest.approx([2, 4, 2 ** 0.5, 1, 2 ** 1.5, 2])
    text = bench_scale.table({"sizes": [a, b]})
    assert "| 4,000 | 1 | 1 | 4.00 / 100 |" in text and "| time per doubling, 1,000 -> 4,000 | | | 2.00x | 4.00x |" in text


@pytest.mark.slow
def test_the_installed_command_writes_every_phase_of_every_size(tmp_path):
    out = tmp_path / "scale.json"
    r = run_cli("bench", "--scale", "--sizes", "3k", "6k", "--out", out, "--factor-rank", "3", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    result = read_json(out)
    assert set(result) == {"machine", "date", "sizes"} and len(result["sizes"]) == 2
    for s in result["sizes"]:
        assert set(s) == {"ratings", "users", "items", "phases"} and list(s["phases"]) == list(bench_scale.PHASES)
        assert all(set(v) == {"seconds", "peak_rss_mb"} and v["seconds"] >= 0 and v["peak_rss_mb"] > 0
                   for v in s["phases"].values())
    assert result["sizes"][0]["ratings"] < result["sizes"][1]["ratings"]
    assert "time per doubling" in r.stdout and json.loads(out.read_text()) == result
