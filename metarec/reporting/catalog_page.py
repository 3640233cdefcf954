"""The results page's "Catalog ranking" section (python -m metarec.reporting.results): eval.ranking=catalog's
numbers over split seeds, where the run folders have them (`make results` evaluates CATALOG_METHODS').

A run folder has them in its own eval.json (trained with eval.ranking=catalog) or in catalog/eval.json
(`metarec eval checkpoint=RUN/checkpoints/best.pt eval.ranking=catalog hydra.run.dir=RUN/catalog`).
Cells: mean ± 95% t-interval over seeds of each seed's mean over users (metarec/evaluation/ranking.py says what
is ranked). The floors are the same for every method of a seed (same tasks): the first method's are shown.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from metarec.reporting.results_page import mean_ci
from metarec.data.states import STATES


def catalog_states(folder: Path) -> dict | None:
    """eval.json's states with a "catalog" entry, from the run folder or its catalog/ subfolder; else None."""
    for path in (folder / "eval.json", folder / "catalog" / "eval.json"):
        if path.is_file():
            states = json.loads(path.read_text()).get("states", {})
            if any("catalog" in s for s in states.values()):
                return states
    return None


def _cell(values: list[float]) -> str:
    mean, ci = mean_ci(values)
    return f"{mean:.4f}" if ci != ci else f"{mean:.4f} ± {ci:.4f}"  # ci is nan for one seed


def catalog_section(found: dict[str, dict[int, dict]], k: int = 10) -> str:
    """found: method -> seed -> eval.json states (with catalog entries). Markdown, or "" when empty."""
    found = {m: v for m, v in found.items() if v}
    if not found:
        return ""
    first = next(iter(found.values()))
    seeds = sorted(first)
    states = [s for s in STATES if all(s in first[x] and "catalog" in first[x][s] for x in seeds)]
    names = (f"recall@{k}", f"ndcg@{k}")
    liked = first[seeds[0]][states[0]]["catalog"].get("liked", ">= 4") if states else ">= 4"
    lines = ["## Catalog ranking", "",
             f"`eval.ranking=catalog` (metarec/evaluation/ranking.py): each test user ranks every item of the state's pool "
             f"(existing items for warm and user_cold, new items for item_cold and user_item_cold) except the items "
             f"of their support set; relevant are the query items they rated {liked} (users without one are left "
             f"out). Recall@{k} / NDCG@{k}, mean ± 95% CI over split seeds {', '.join(map(str, seeds))}. popularity "
             "counts training ratings; popularity_transductive also counts every support rating of the state "
             "(other test users' too: the only count a new item has); bias / bias_transductive rank by the floors' "
             "item biases.", "",
             "| method | " + " | ".join(f"{s} R@{k} | {s} N@{k}" for s in states) + " |",
             "|---" * (2 * len(states) + 1) + "|"]
    rows = [(m, runs, lambda c: c["method"]) for m, runs in found.items()]
    for floor in first[seeds[0]][states[0]]["catalog"]["floors"] if states else []:
        rows.append((f"floor: {floor}", first, lambda c, f=floor: c["floors"][f]))
    for label, runs, pick in rows:
        cells = [_cell([pick(runs[seed][s]["catalog"])[n] for seed in sorted(runs)]) for s in states for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"Recall@{k} by support size (the ratings a user gave; mean over seeds of each bucket's mean):", ""]
    for m in found:
        lines += [f"| {m}: support | " + " | ".join(states) + " |", "|---" * (len(states) + 1) + "|"]
        labels = list(dict.fromkeys(b["support"] for s in states for b in first[seeds[0]][s]["catalog"]["by_support"]))
        for label in labels:
            cells = []
            for s in states:
                vals = [b["method"][names[0]] for seed in found[m] for b in found[m][seed][s]["catalog"]["by_support"]
                        if b["support"] == label]
                cells.append(f"{sum(vals) / len(vals):.4f}" if vals else "")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


CATALOG_METHODS = ("ridge",)  # the methods whose checkpoints `make results` also ranks over the catalogue


def missing(folder_of: Callable[[str, int], Path], methods: list[str], seeds: list[int]) -> list[Path]:
    """The run folders of CATALOG_METHODS with a best.pt and no catalogue numbers yet."""
    folders = [folder_of(m, s) for m in methods if m in CATALOG_METHODS for s in seeds]
    return [f for f in folders if (f / "checkpoints" / "best.pt").is_file() and catalog_states(f) is None]


def eval_args(folder: Path, extra: list[str]) -> list[str]:
    """`metarec eval` of a run's best checkpoint with eval.ranking=catalog into RUN/catalog."""
    return ["eval", f"checkpoint={folder / 'checkpoints' / 'best.pt'}", "eval.ranking=catalog",
            f"hydra.run.dir={folder / 'catalog'}", *extra]


def from_folders(folder_of: Callable[[str, int], Path], methods: list[str], seeds: list[int]) -> str:
    """The section for the run folders folder_of(method, seed) that have catalogue numbers."""
    found = {m: {s: st for s in seeds if (st := catalog_states(folder_of(m, s))) is not None} for m in methods}
    return catalog_section(found)
