"""The page of `make results`: runs over split seeds aggregated into plain numbers, then markdown.

summarize() turns the runs' eval.json states into per-state means ± 95% CI over seeds and the best
meta-learner's paired per-task differences (per seed the mean over identical tasks and its SE,
combined over seeds as the mean of the seed means with SE = sqrt(sum SE_s^2) / n_seeds); render()
writes docs/results.md from them. No model code and no file reading: metarec.reporting.results does that.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from metarec.evaluation.evaluate import paired_difference
from metarec.reporting.published import published_lines
from metarec.reporting.results_classes import UNRECORDED, class_lines, class_summary, phases, run_class
from metarec.reporting.runs import headline
from metarec.errors import UserError
from metarec.data import states as state_names
from metarec.data.states import STATES

FLOORS = ("global_mean", "user_mean", "bias", "bias_transductive", "mf_foldin", "mf_transductive")
NEW_ITEM_STATES = ("item_cold", "user_item_cold")
# what every method is held against on user_cold: the MF fold-in floor, ridge, plain MAML, MeLU as published
NEW_USER_BARS = ("floor: mf_foldin", "ridge", "maml", "melu_paper")
BASELINE = "pretrain"  # not a meta-learner: never "the best meta-learner"
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


@dataclass
class SeedRun:
    """What one finished run left: eval.json's states and the trainer's best validation MAE."""
    method: str
    seed: int
    states: dict
    best_val: float
    fingerprint: str | None = None  # run_info.json's SHA-256 of the data files it read
    data_root: str | None = None  # the data.root it was configured with (None: the cache)


# ---- aggregation -------------------------------------------------------------------------------------
def per_task(state: dict, metric: str) -> list[float]:
    return state["per_task"][str(state["headline_step"])][metric]


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean over seeds and the half-width of its 95% t-interval (nan for one seed)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def combine(seed_diffs: list[tuple[float, float]]) -> tuple[float, float]:
    """Per-seed paired differences (mean, SE) -> (mean of the means, sqrt(sum SE^2) / n)."""
    n = len(seed_diffs)
    return sum(d for d, _ in seed_diffs) / n, math.sqrt(sum(se ** 2 for _, se in seed_diffs)) / n


def paired(a: dict[int, dict], b: dict[int, dict] | None, state: str, metric: str,
           floor: str | None = None) -> tuple[float, float]:
    """a - b over identical tasks, per seed, combined: a and b map seed -> eval.json states; b's side
    is the floor `floor` of a's own eval.json when b is None."""
    diffs = []
    for seed in sorted(a):
        sa = a[seed][state]
        vb = sa["floors_per_task"][floor][metric] if b is None else per_task(b[seed][state], metric)
        va = per_task(sa, metric)
        if len(va) != len(vb):
            raise ValueError(f"seed {seed} {state}: {len(va)} vs {len(vb)} tasks: not the same tasks")
        diffs.append(paired_difference(va, vb))
    return combine(diffs)


def summarize(runs: list[SeedRun]) -> dict:
    """Everything the page shows, as plain numbers (the tests check these by hand)."""
    by_method: dict[str, dict[int, dict]] = {}
    val: dict[str, list[float]] = {}
    for r in runs:
        by_method.setdefault(r.method, {})[r.seed] = r.states
        val.setdefault(r.method, []).append(r.best_val)
    methods = list(by_method)
    seeds = sorted(set.intersection(*(set(v) for v in by_method.values())))
    by_method = {m: {s: v[s] for s in seeds} for m, v in by_method.items()}
    first = by_method[methods[0]]
    states = [s for s in STATES if all(s in first[k] for k in seeds)]
    least = state_names.MIN_TASKS
    small = [f"{s} ({first[k][s]['n_tasks']} tasks, seed {k})" for s in states for k in seeds if first[k][s]["n_tasks"] < least]
    if small:  # a mean over a handful of tasks is noise: no silent number
        raise UserError(f"a results page reports no state with fewer than {least} tasks: {', '.join(small)}; "
                        "grow it (data.cut.new_ratings, data.split, data.min_ratings) and train again")
    table: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    for state in states:
        rows: dict[str, dict[str, tuple[float, float]]] = {}
        for m in methods:
            rows[m] = {k: mean_ci([headline(by_method[m][s][state])[k] for s in seeds])
                       for k in ("mae", "ndcg@3", "ndcg_lin@3")}
        for f in (*FLOORS, "random"):
            if all(f in first[s][state].get("floors", {}) for s in seeds):
                rows[f"floor: {f}"] = {k: mean_ci([first[s][state]["floors"][f][k] for s in seeds])
                                       for k in ("mae", "ndcg@3", "ndcg_lin@3") if k in first[seeds[0]][state]["floors"][f]}
        table[state] = rows
    meta = [m for m in methods if m != BASELINE]
    best = min(meta, key=lambda m: statistics.fmean(val[m])) if meta else None
    comparisons: dict[str, dict[str, dict]] = {}
    if best is not None:
        for state in states:
            # the best floor of the best meta-learner's own input class (all floors for runs that record none)
            kind, declared = run_class(by_method[best], state), first[seeds[0]][state].get("floor_classes", {})
            floors = [f for f in FLOORS if f"floor: {f}" in table[state] and declared.get(f, kind) in (kind, UNRECORDED)]
            best_floor = min(floors, key=lambda f: table[state][f"floor: {f}"]["mae"][0])
            out = {"best_floor": best_floor}
            for metric in ("mae", "ndcg@3"):
                if BASELINE in by_method:
                    out[f"{metric} vs {BASELINE}"] = paired(by_method[best], by_method[BASELINE], state, metric)
                out[f"{metric} vs bias"] = paired(by_method[best], None, state, metric, "bias")
                out[f"{metric} vs {best_floor}"] = paired(by_method[best], None, state, metric, best_floor)
            out["ndcg@3 vs random"] = paired(by_method[best], None, state, "ndcg@3", "random")
            comparisons[state] = out
    classes = class_summary(by_method, states, val, BASELINE, paired)
    return {"methods": methods, "seeds": seeds, "states": states, "table": table,
            "val_mae": {m: mean_ci(v) for m, v in val.items()}, "best": best, "comparisons": comparisons,
            "new_items": new_items(by_method, states), "new_users": new_users(by_method, states), "classes": classes, "phases": phases(by_method),
            "transductive": sorted({m for per in classes.values() for m in per["transductive"]["methods"]})}


def new_users(by_method: dict[str, dict[int, dict]], states: list[str]) -> dict[str, dict[str, tuple[float, float]]]:
    """Every method against NEW_USER_BARS on user_cold (those present): method -> bar -> paired MAE
    (difference, SE) over identical tasks."""
    if "user_cold" not in states:
        return {}
    first = next(iter(by_method.values()))
    floors = {b: b.removeprefix("floor: ") for b in NEW_USER_BARS if b.startswith("floor: ")}  # bar -> floor name
    bars = [b for b in NEW_USER_BARS if b in by_method or (b in floors and all(
        floors[b] in first[k]["user_cold"].get("floors_per_task", {}) for k in first))]
    return {m: {b: paired(runs, by_method.get(b) if b not in floors else None, "user_cold", "mae", floors.get(b))
                for b in bars if b != m}
            for m, runs in by_method.items()}


def new_items(by_method: dict[str, dict[int, dict]], states: list[str]) -> dict[str, dict[str, dict]]:
    """Every method against the bias_transductive floor on the new-item states:
    state -> method -> metric -> paired (difference, SE) over identical tasks."""
    out: dict[str, dict[str, dict]] = {}
    for state in (s for s in NEW_ITEM_STATES if s in states):
        first = next(iter(by_method.values()))
        if not all("bias_transductive" in first[k][state].get("floors_per_task", {}) for k in first):
            continue
        out[state] = {m: {metric: paired(runs, None, state, metric, "bias_transductive") for metric in ("mae", "ndcg@3")}
                      for m, runs in by_method.items()}
    return out


def targets(summary: dict) -> list[tuple[str, bool, str]]:
    """The issue's ml-100k targets: (what, reached, the numbers)."""
    out = []
    comp = summary["comparisons"]
    for state in ("user_cold", "user_item_cold"):
        if state not in comp:
            continue
        for other in (BASELINE, "bias"):
            key = f"mae vs {other}"
            if key not in comp[state]:
                continue
            d, se = comp[state][key]
            out.append((f"{state}: MAE of {summary['best']} below {other} by more than 2 SE", d < -2 * se,
                        f"difference {d:+.4f} ± {se:.4f} SE ({_z(d, se)} SE)"))
    for state in summary["states"]:
        floor = comp[state]["best_floor"]
        d, se = comp[state][f"mae vs {floor}"]
        out.append((f"{state}: MAE of {summary['best']} below the best floor ({floor}) by more than 2 SE", d < -2 * se,
                    f"difference {d:+.4f} ± {se:.4f} SE ({_z(d, se)} SE)"))
    for state in summary["states"]:
        d, se = comp[state]["ndcg@3 vs random"]
        out.append((f"{state}: nDCG@3 (2^r-1) of {summary['best']} above random order by more than 0.1", d > 0.1,
                    f"difference {d:+.4f} ± {se:.4f} SE"))
    return out


# ---- the page ---------------------------------------------------------------------------------------
def _z(d: float, se: float) -> str:
    return f"{d / se:+.1f}" if se > 0 else ("+inf" if d > 0 else "-inf" if d < 0 else "0")


def _pm(pair: tuple[float, float] | None) -> str:
    if pair is None:
        return ""
    mean, ci = pair
    return f"{mean:.4f}" if math.isnan(ci) else f"{mean:.4f} ± {ci:.4f}"


def summary_tables(summary: dict) -> list[str]:
    """Two compact tables (MAE; nDCG@3 with gain 2^r-1 / linear), one column per state, each row marked with
    its input class where it read other test users' support sets: README shows them."""
    states = summary["states"]
    rows = list(summary["table"][states[0]])
    out = ["## Summary", "", "MAE (mean over 3 seeds; lower is better):", "",
           "| method | " + " | ".join(states) + " |", "|---" * (len(states) + 1) + "|"]
    for name in rows:
        cells = [summary["table"][s].get(name, {}).get("mae") for s in states]
        if any(c is not None for c in cells):
            out.append(f"| {name}{mark(name, summary)} | " + " | ".join("" if c is None else f"{c[0]:.4f}" for c in cells) + " |")
    out += ["", "nDCG@3, gain 2^r-1 / gain linear (mean over seeds; higher is better):", "",
            "| method | " + " | ".join(states) + " |", "|---" * (len(states) + 1) + "|"]
    for name in rows:
        cells = [summary["table"][s].get(name, {}) for s in states]
        out.append(f"| {name}{mark(name, summary)} | " + " | ".join(f"{c['ndcg@3'][0]:.3f} / {c['ndcg_lin@3'][0]:.3f}" if "ndcg@3" in c else ""
                                               for c in cells) + " |")
    return out + [""]


def shown_command(argv: list[str], data_folder: str | None) -> str:
    """The command that made the page, as anyone could type it: no --report-only, the data named by
    the folder the runs read (PATH/ml-100k, as `make help` writes it), no absolute path of this machine."""
    shown, rest = ["python -m metarec.reporting.results"], iter(argv)
    if data_folder:
        shown += ["--data-root", f"PATH/{data_folder}"]
    for arg in rest:
        if arg == "--data-root":
            next(rest, None)  # the runs' own data.root is shown above
        elif arg != "--report-only" and not arg.startswith("--data-root="):
            shown.append(f"PATH/{Path(arg).name}" if Path(arg).expanduser().is_absolute() else arg)
    return " ".join(shown)


TITLES = {"ml-100k": "MovieLens-100K", "ml-1m": "MovieLens-1M", "dbook": "DBook (our split)",
          "dbook-metahin": "DBook (MetaHIN's split)", "movietweetings": "MovieTweetings 100K"}


def new_item_lines(summary: dict) -> list[str]:
    """The table of every method minus bias_transductive on new items (MAE and nDCG@3: eval.json keeps
    per-task values of these two; the linear gain's means are in the state tables)."""
    if not summary.get("new_items"):
        return []
    lines = ["## New items: every method against the bias_transductive floor", "",
             "Method minus floor: bias_transductive on identical tasks (per seed the mean over tasks and its SE, "
             "combined over seeds); negative MAE and positive nDCG differences favour the method; z in brackets. "
             "(transductive): reads other test users' support ratings of the state, as the floor does.", "",
             "| state | method | MAE diff ± SE (z) | nDCG@3 (2^r-1) diff ± SE (z) |", "|---|---|---|---|"]
    for state, rows in summary["new_items"].items():
        for m, diffs in rows.items():
            cells = [f"{d:+.4f} ± {se:.4f} ({_z(d, se)})" for d, se in (diffs[k] for k in ("mae", "ndcg@3"))]
            lines.append(f"| {state} | {m}{mark(m, summary)} | " + " | ".join(cells) + " |")
    return lines + [""]


def new_user_lines(summary: dict) -> list[str]:
    """The table of every method minus each of NEW_USER_BARS on user_cold (MAE)."""
    rows = summary.get("new_users")
    if not rows:
        return []
    bars = [b for b in NEW_USER_BARS if any(b in diffs for diffs in rows.values())]
    lines = ["## New users: every method against the MF fold-in floor, ridge, MAML and MeLU as published", "",
             "user_cold MAE, method minus the column's method or floor on identical tasks (per seed the mean over "
             "tasks and its SE, combined over seeds); negative favours the row's method; z in brackets.", "",
             "| method | " + " | ".join(f"vs {b}" for b in bars) + " |", "|---|" + "---|" * len(bars)]
    for m, diffs in rows.items():
        cells = [f"{diffs[b][0]:+.4f} ± {diffs[b][1]:.4f} ({_z(*diffs[b])})" if b in diffs else "" for b in bars]
        lines.append(f"| {m}{mark(m, summary)} | " + " | ".join(cells) + " |")
    return lines + [""]


def mark(name: str, summary: dict) -> str:
    """' (transductive)' for a method or floor that reads other test users' support ratings of the state
    (a method: in some state, as its runs' eval.json recorded)."""
    return " (transductive)" if name in summary.get("transductive", ()) or name.endswith("_transductive") else ""


def render(summary: dict, wall: tuple[float, int] | None, hparams: dict[str, str], command: str,
           fingerprint: str | None = None, protocol: str = "", data_folder: str | None = None,
           variant: str = "ml-100k") -> str:
    seeds = ", ".join(map(str, summary["seeds"]))
    copy = f"folder `{data_folder}`, " if data_folder else ""
    lines = [f"# Results on {TITLES[variant]} (MeLU's cold-start protocol)", "", *([protocol, ""] if protocol else []),
             f"Generated by `make results` (`{command}`)"
             + (f"; training and evaluating every run took {wall[0] / 60:.1f} min wall time"
                + (f" over {wall[1]} invocations (each trained the runs that were missing)." if wall[1] > 1 else ".")
                if wall is not None else "; no total wall time is given, because some of these runs were not trained "
                "by a recorded invocation (a run trained by hand or copied from another checkout).")
             + (f" Every run read the same copy of the data ({copy}SHA-256 fingerprint `{fingerprint[:16]}…` in each "
                "run_info.json)." if fingerprint else ""),
             f"Split seeds {seeds} (one run per method and seed: `metarec train experiment=... seed=K`; the split "
             "follows the seed). Cells: mean ± 95% CI over seeds (t-interval) of each run's mean over tasks. "
             "nDCG@3 is given with both gains: **2^r-1** (MeLU's) and **linear** (r). Floors are computed on "
             "the same tasks; `random` is the random-order nDCG.", ""]
    lines += summary_tables(summary)
    for state in summary["states"]:
        lines += [f"## {state}", "", "| method | MAE | nDCG@3 (gain 2^r-1) | nDCG@3 (gain linear) |", "|---|---|---|---|"]
        for name, row in summary["table"][state].items():
            best = " (best meta-learner)" if name == summary["best"] else ""
            lines.append(f"| {name}{mark(name, summary)}{best} | {_pm(row.get('mae'))} | {_pm(row.get('ndcg@3'))} | {_pm(row.get('ndcg_lin@3'))} |")
        lines.append("")
    lines += class_lines(summary, _pm) + new_user_lines(summary) + new_item_lines(summary)
    lines += published_lines(summary, variant, _pm)
    best = summary["best"]
    if best is not None:
        lines += ["## Paired differences of the best meta-learner", "",
                  f"Best meta-learner by mean validation MAE over seeds: **{best}**. Validation MAE (the trainer's "
                  "best, mean ± 95% CI over seeds): " + ", ".join(f"{m} {_pm(v)}" for m, v in summary["val_mae"].items()) + ".",
                  "", f"{best} minus the other method on identical tasks: per seed the mean over tasks and its SE, "
                  "combined over seeds (mean of the seed means, SE = sqrt(sum SE_s^2) / n). Negative MAE and "
                  "positive nDCG differences favour the meta-learner; z = difference / SE.", "",
                  "| state | vs | MAE diff ± SE (z) | nDCG@3 (2^r-1) diff ± SE (z) |", "|---|---|---|---|"]
        for state, comp in summary["comparisons"].items():
            for other in (BASELINE, comp["best_floor"], "bias"):
                if f"mae vs {other}" not in comp or (other == "bias" and comp["best_floor"] == "bias"):
                    continue
                label = other if other == BASELINE else f"floor: {other}" + (" (best floor)" if other == comp["best_floor"] else "")
                cells = []
                for metric in ("mae", "ndcg@3"):
                    d, se = comp[f"{metric} vs {other}"]
                    cells.append(f"{d:+.4f} ± {se:.4f} ({_z(d, se)})")
                lines.append(f"| {state} | {label} | {cells[0]} | {cells[1]} |")
        lines += ["", f"## Targets ({variant})", ""]
        for what, ok, numbers in targets(summary):
            lines.append(f"- {'reached' if ok else '**not reached**'}: {what}: {numbers}")
        lines.append("")
    if hparams:
        lines += ["## Hyper-parameters", "", "Chosen on validation users only (the trainer's best validation MAE); "
                  "docs/tuning.md says how, per preset. Per method, the preset and its algorithm settings:", ""]
        lines += [f"- {m}: {h}" for m, h in hparams.items()]
        lines.append("")
    return "\n".join(lines)
