"""item_cold's own validation state through the installed console script: data.val_items holds out a share
of the new items (val_item_cold), trainer.select_state chooses best.pt on it, `metarec eval eval.split=val`
reports it beside its floors; without the share, selecting on it is one clear line."""
import json

import pytest
from conftest import ML100K, needs_ml100k, read_json, run_cli

QUICK = [f"data.root={ML100K}", "trainer.max_steps=20", "trainer.val_every=10", "trainer.progress=false", "device=cpu",
         "device.threads=1"]


@needs_ml100k()
@pytest.mark.slow
def test_training_selects_on_val_item_cold_and_eval_reports_it(tmp_path):
    run = tmp_path / "run"
    r = run_cli("train", "data.val_items=0.2", "trainer.select_state=val_item_cold", *QUICK, f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in line]
    assert [row["step"] for row in val] == [10, 20] and all(row["mae"] > 0 for row in val)
    assert set(read_json(run / "eval.json")["states"]) == {"warm", "user_cold", "item_cold", "user_item_cold"}
    r = run_cli("eval", f"checkpoint={run}/checkpoints/best.pt", "eval.split=val", "trainer.progress=false",
                "device=cpu", "device.threads=1", f"hydra.run.dir={tmp_path / 'val'}")
    assert r.returncode == 0, r.stderr[-3000:]
    states = read_json(tmp_path / "val" / "eval.json")["states"]
    assert set(states) == {"val", "val_new", "val_item_cold"} and "bias_transductive" in states["val_item_cold"]["floors"]
    best = min(val, key=lambda row: row["mae"])["mae"]  # best.pt is the step best on val_item_cold
    assert states["val_item_cold"]["steps"][states["val_item_cold"]["headline_step"]]["mae"] == pytest.approx(best, abs=1e-4)


@needs_ml100k()
def test_selecting_on_val_item_cold_without_held_out_items_is_one_line(tmp_path):
    r = run_cli("train", "trainer.select_state=val_item_cold", *QUICK, f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "metarec: error: there are no val_item_cold tasks to select the best checkpoint with: give validation users a "
        "share (data.split), held-out new items a share (data.val_items, for val_item_cold), or loosen the data filter")
    r = run_cli("train", "trainer.select_state=test", *QUICK, f"hydra.run.dir={tmp_path / 'bad'}")
    assert r.returncode == 2 and r.stderr == "metarec: error: trainer.select_state='test' is not one of val, val_new, val_item_cold\n"
