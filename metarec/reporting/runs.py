"""Read what a run left on disk: one run folder as a Run, and the run folders under a sweep folder.

Training and evaluation leave .hydra/, status.json, run_info.json, metrics.jsonl and eval.json in a
run folder; this reads them without model code (runs copied off a cluster read the same), tolerating
what a failed or running job leaves half-written. `metarec report` and metarec.reporting.results both read
runs through load_run.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from metarec.run.run_lock import STALE_HEARTBEAT_S, held

VAL_SPLITS = ("val", "valid", "validation")


@dataclass
class Run:
    """One run folder as read from disk; a missing or unreadable file leaves its field empty."""
    path: Path  # the folder as found under the DIR the user gave
    name: str  # path shown in the report: relative to the report folder when inside it
    overrides: list[str]  # from .hydra/overrides.yaml, e.g. ["algo=maml", "seed=1"]
    config: dict  # .hydra/config.yaml, {} when missing
    status: str  # finished | failed | interrupted | running | died | unfinished
    reason: str | None  # why it is not finished
    step: int | None  # last training step status.json recorded
    info: dict  # run_info.json, {} when missing
    val: list[dict]  # metrics.jsonl rows of the validation split
    states: dict  # eval.json "states", {} when there is none
    damage: list[str] = field(default_factory=list)  # what was found unreadable, e.g. "metrics.jsonl line 7 is torn"

    @property
    def seed(self) -> str | None:
        for item in self.overrides:
            if _override_key(item) == "seed":
                return item.split("=", 1)[1]
        return None if self.config.get("seed") is None else str(self.config["seed"])

    @property
    def configuration(self) -> str:
        """The overrides without the seed: runs that share it are seeds of one configuration."""
        return " ".join(o for o in self.overrides if _override_key(o) != "seed") or "(defaults)"

    @property
    def data_fingerprint(self) -> str | None:
        """run_info.json's SHA-256 of the data files the run read (None for runs without one)."""
        value = self.info.get("data_fingerprint")
        return None if value is None else str(value)

    @property
    def data_root(self) -> str | None:
        """The data.root the run was configured with (None: the cache, or generated data)."""
        value = lookup(self.config, "data", "root")
        return None if value in (None, "") else str(value)

    def best_val(self, metric: str = "mae") -> float:
        """The best (lowest) validation `metric` the trainer logged; nan when it logged none."""
        values = [v for v in (number(row.get(metric)) for row in self.val) if v is not None]
        return min(values) if values else float("nan")


def headline_step(steps: dict) -> str | None:
    """The key of the last adaptation step in an eval.json "steps" dict ("10" of "0", "2", "10")."""
    keys = [k for k in steps if re.fullmatch(r"-?\d+", str(k))]
    return max(keys, key=int) if keys else None


def headline(state: dict) -> dict:
    """A state's headline metrics: those at its "headline_step" (the adaptation steps the run was
    evaluated for), else at its last adaptation step."""
    steps = state.get("steps") if isinstance(state, dict) else None
    key = headline_step(steps) if isinstance(steps, dict) else None
    if isinstance(steps, dict) and str(state.get("headline_step")) in steps:
        key = str(state["headline_step"])
    return dict(steps[key]) if key is not None and isinstance(steps[key], dict) else {}


def is_run_folder(path: Path) -> bool:
    return (path / ".hydra").is_dir() or (path / "status.json").is_file() or (path / "eval.json").is_file()


def find_runs(root: Path) -> list[Path]:
    """Every run folder at or under root (runs do not nest, so a run folder is not descended)."""
    if is_run_folder(root):
        return [root]
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if here != root and is_run_folder(here):
            found.append(here)
            dirnames.clear()
        else:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return sorted(found, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))])


def load_run(path: Path, name: str | None = None) -> Run:
    """The run in `path`: its status is "unfinished" when it claims to be finished without eval.json states."""
    damage: list[str] = []
    overrides = _read_yaml(path / ".hydra" / "overrides.yaml", damage)
    config = _read_yaml(path / ".hydra" / "config.yaml", damage)
    status_doc, status_error = _read_json(path / "status.json")
    info, info_error = _read_json(path / "run_info.json")
    eval_doc, eval_error = _read_json(path / "eval.json")
    damage += [e for e in (status_error, info_error) if e is not None and not e.startswith("no ")]
    if status_error is None and not isinstance(status_doc, dict):
        damage.append("status.json is not a JSON object")
    states = eval_doc.get("states") if isinstance(eval_doc, dict) else None
    if not isinstance(states, dict) or not states:
        states, eval_error = {}, eval_error or "eval.json has no states"
    status_doc = status_doc if isinstance(status_doc, dict) else {}
    status, reason, step = status_doc.get("status"), status_doc.get("reason"), status_doc.get("step")
    if status in (None, "finished") and not states:
        if status == "finished" or (path / "eval.json").exists():  # it claims results that are not there
            damage.append(eval_error if eval_error.startswith("eval.json") else f"{eval_error} (status.json says finished)")
        status, reason = "unfinished", reason or eval_error
    elif status == "running":
        status, reason = liveness(path, status_doc)
    elif status is None:
        status = "finished"  # evaluated, but written by a version that kept no status.json
    val = [row for row in _read_jsonl(path / "metrics.jsonl", damage) if row.get("split") in VAL_SPLITS]
    if status == "running":  # a live run may be writing its last line right now
        damage = [d for d in damage if "last line" not in d]
    return Run(
        path=path,
        name=name or str(path),
        overrides=[str(o) for o in overrides] if isinstance(overrides, list) else [],
        config=config if isinstance(config, dict) else {},
        status=str(status),
        reason=None if reason is None else str(reason),
        step=step if isinstance(step, int) else None,
        info=info if isinstance(info, dict) else {},
        val=val,
        states=states,
        damage=damage,
    )


def liveness(path: Path, status_doc: dict) -> tuple[str, str | None]:
    """A run whose status.json says running: still "running", or "died" when no process holds its lock
    (tested on the host that wrote it) or, where the lock cannot be tested, its heartbeat is stale."""
    beat = number(status_doc.get("heartbeat"))
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(beat)) if beat is not None else None
    last = f"; last heartbeat {since}" if since else ""
    live = held(path)
    if live is False:
        return "died", f"its process ended without a last word (killed?) at step {status_doc.get('step')}{last}: " \
                       f"continue it with trainer.resume=auto"
    if live is None and beat is not None and time.time() - beat > STALE_HEARTBEAT_S:
        return "died", f"no heartbeat for {(time.time() - beat) / 60:.0f} min{last}: continue it with trainer.resume=auto"
    return "running", None


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _read_json(path: Path) -> tuple[object, str | None]:
    if not path.is_file():
        return None, f"no {path.name}"
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, f"{path.name} unreadable ({type(err).__name__}: {err})"


def _read_yaml(path: Path, damage: list[str]) -> object:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        damage.append(f"{path.parent.name}/{path.name} unreadable ({type(err).__name__})")
        return None


def _read_jsonl(path: Path, damage: list[str]) -> list[dict]:
    """The rows of a JSON-lines file; lines that are not a JSON object are skipped and named in `damage`."""
    if not path.is_file():
        return []
    rows, bad = [], []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for n, line in enumerate(lines, start=1):
        try:  # a running job may have left a half-written last line
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif line.strip():
            bad.append(n)
    if bad == [len(lines)]:
        damage.append(f"{path.name}'s last line ({len(lines)}) is torn: skipped")
    elif bad:
        damage.append(f"{path.name} has {len(bad)} unreadable line(s) (first: line {bad[0]}): skipped")
    return rows


def lookup(doc: dict, *keys: str):
    """doc[k1][k2]..., or None where a level is missing or not a dict."""
    for key in keys:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


def number(value) -> float | None:
    """A finite-or-infinite float from a JSON number; None for bools, strings, None and nan."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


LATER_KEYS = {("data", "transductive"): False, ("data", "trans_rank"): 10, ("data", "trans_reg"): 10.0,
              ("data", "trans_folds"): 5, ("data", "trans_shares"): [1.0], ("eval", "ranking"): "query",
              ("eval", "allow_protocol_change"): False, ("trainer", "loggers"): [], ("trainer", "tracking_experiment"): None,
              ("trainer", "tracking_uri"): None, ("data", "val_items"): 0.0, ("trainer", "select_state"): None}
# data.item_stats_transductive is not among them: a run from before it records no input class, so it is trained again


def same_config(recorded: dict, composed: dict) -> bool:
    """The recorded run's config is the composed one, up to LATER_KEYS at their old behaviour."""
    composed = copy.deepcopy(composed)
    for (group, key), value in LATER_KEYS.items():
        if key not in recorded.get(group, {}) and composed.get(group, {}).get(key, value) == value:
            composed.get(group, {}).pop(key, None)
    return recorded == composed
