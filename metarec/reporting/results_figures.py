"""The results pages' figures (PNG, Agg, as metarec/reporting/report.py draws): each method against the best floor of its
input class, MAE and nDCG by support size, and the size benchmark's cost; each returns the series it plotted."""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

from metarec.errors import UserError
from metarec.reporting.results_page import FLOORS, SeedRun, paired
from metarec.data.states import STATES

CLASSES = ("inductive", "transductive")
METRICS = {"mae": "MAE (lower is better)", "ndcg@3": "nDCG@3, gain 2^r-1 (higher is better)"}
PHASES = ("read", "split_tasks", "factors", "floors", "train_step", "evaluation")  # `metarec bench --scale`
Z_95 = 1.96


def _figure(nrows: int, ncols: int, width: float = 4.8, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot: no global state, no display needed
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# ---- input classes --------------------------------------------------------------------------------------
def method_class(runs: dict[int, dict], state: str, transductive: set[str], method: str) -> str:
    """The class a method's eval.json gives the state's row ("input_class": "inductive" | "transductive", the
    same in every seed), else whether the page's summary counts the method as transductive (`transductive`)."""
    found = {runs[s][state].get("input_class") for s in runs} - {None}
    if len(found) > 1:
        raise UserError(f"{method} {state}: the seeds' eval.json disagree on its input class ({sorted(found)}): "
                        "train them again with one version of metarec")
    if found:
        value = found.pop()
        if value not in CLASSES:
            raise UserError(f"{method} {state}: eval.json's input_class {value!r} is not one of {', '.join(CLASSES)}")
        return value
    return "transductive" if method in transductive else "inductive"


def floor_class(state_doc: dict, floor: str) -> str:
    """A floor's class as eval.json records it ("floor_classes"), else its name: the *_transductive floors read other test
    users' support sets of the state."""
    value = state_doc.get("floor_classes", {}).get(floor)
    return value if value in CLASSES else ("transductive" if floor.endswith("_transductive") else "inductive")


def best_floors(by_method: dict[str, dict[int, dict]], state: str) -> dict[str, str]:
    """class -> the floor of that class with the lowest mean MAE over seeds (those with per-task values)."""
    first = next(iter(by_method.values()))
    means: dict[str, dict[str, float]] = {}
    for floor in FLOORS:
        if all(floor in first[s][state].get("floors_per_task", {}) for s in first):
            cls = floor_class(next(iter(first.values()))[state], floor)
            means.setdefault(cls, {})[floor] = statistics.fmean(first[s][state]["floors"][floor]["mae"] for s in first)
    return {cls: min(m, key=m.get) for cls, m in means.items()}


# ---- 1: each method minus the best floor of its class ------------------------------------------------------
def floor_differences(by_method: dict[str, dict[int, dict]], states: list[str], transductive: set[str],
                      metric: str = "mae") -> dict[str, list[dict]]:
    """state -> rows sorted by difference: method, class, floor, difference and SE (paired over identical
    tasks per seed, combined over seeds as the page's tables do)."""
    out: dict[str, list[dict]] = {}
    for state in states:
        floors = best_floors(by_method, state)
        rows = []
        for method, runs in by_method.items():
            cls = method_class(runs, state, transductive, method)
            if cls not in floors:
                continue  # no floor of its class on this state
            d, se = paired(runs, None, state, metric, floors[cls])
            rows.append({"method": method, "class": cls, "floor": floors[cls], "diff": d, "se": se})
        out[state] = sorted(rows, key=lambda r: r["diff"])
    return out


def draw_floor_differences(data: dict[str, list[dict]], path: Path, metric: str = "mae") -> Path | None:
    """One panel per state: a dot per method at its difference, a 95% bar (1.96 SE), a zero line."""
    states = [s for s, rows in data.items() if rows]
    if not states:
        return None
    n = max(len(data[s]) for s in states)
    fig, axes = _figure(1, len(states), width=4.6, height=1.2 + 0.32 * n)
    style = {"inductive": ("o", "tab:blue"), "transductive": ("s", "tab:orange")}
    for ax, state in zip(axes[0], states):
        rows = data[state]
        for y, r in enumerate(rows):
            marker, color = style[r["class"]]
            ax.errorbar(r["diff"], y, xerr=Z_95 * r["se"], fmt=marker, color=color, ms=5, capsize=2,
                        label=f"{r['class']} (vs {r['floor']})")
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_yticks(range(len(rows)), [r["method"] for r in rows], fontsize=8)
        ax.invert_yaxis()  # the best (most negative MAE difference) at the top
        ax.set(xlabel=f"{metric} minus the best floor of its class", title=state)
        ax.grid(axis="x", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="best")
    return _save(fig, path)


# ---- 2: metrics by support size ------------------------------------------------------------------------------
def support_curves(by_method: dict[str, dict[int, dict]], states: list[str],
                   metrics: tuple[str, ...] = tuple(METRICS)) -> dict[str, dict]:
    """state -> {"buckets": labels, metric -> {line -> [mean over seeds of the bucket's mean, nan if absent]}};
    one line per method and one per best floor of each class ("floor: NAME": dashed inductive, dotted
    transductive)."""
    out: dict[str, dict] = {}
    for state in states:
        first = next(iter(by_method.values()))
        if not all("by_support" in first[s][state] for s in first):
            continue
        buckets = list(dict.fromkeys(b["support"] for s in first for b in first[s][state]["by_support"]))
        entry: dict = {"buckets": buckets}
        floors = best_floors(by_method, state)
        for metric in metrics:
            lines = {m: _bucket_means(runs, state, buckets, metric, None) for m, runs in by_method.items()
                     if all("by_support" in runs[s][state] for s in runs)}
            for floor in dict.fromkeys(floors.values()):
                lines[f"floor: {floor}"] = _bucket_means(first, state, buckets, metric, floor)
            entry[metric] = lines
        out[state] = entry
    return out


def _bucket_means(runs: dict[int, dict], state: str, buckets: list[str], metric: str, floor: str | None) -> list[float]:
    per_bucket: dict[str, list[float]] = {b: [] for b in buckets}
    for seed in runs:
        for b in runs[seed][state]["by_support"]:
            values = b["method"] if floor is None else b.get("floors", {}).get(floor, {})
            v = values.get(metric)
            if isinstance(v, (int, float)) and not math.isnan(v):
                per_bucket[b["support"]].append(float(v))
    return [statistics.fmean(v) if v else math.nan for v in per_bucket.values()]


def draw_support_curves(data: dict[str, dict], path: Path) -> Path | None:
    """A row per metric, a column per state: each line against the support-size bucket."""
    states = list(data)
    if not states:
        return None
    metrics = [m for m in METRICS if all(m in data[s] for s in states)]
    fig, axes = _figure(len(metrics), len(states))
    for row, metric in enumerate(metrics):
        for col, state in enumerate(states):
            ax, x = axes[row][col], range(len(data[state]["buckets"]))
            for name, values in data[state][metric].items():
                floor = name.startswith("floor: ")
                ls = (":" if name.endswith("_transductive") else "--") if floor else "-"  # the two classes' floors apart
                ax.plot(x, values, ls=ls, color="black" if floor else None, lw=1.6 if floor else 1.0,
                        marker="o", ms=3, label=name)
            ax.set_xticks(x, data[state]["buckets"])
            ax.set(xlabel="support-set size (ratings)", ylabel=METRICS[metric], title=state)
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _save(fig, path)


# ---- 3: the size benchmark ---------------------------------------------------------------------------------
def scale_series(bench: dict) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{"seconds"|"peak_rss_mb": {phase: [(ratings, value) sorted by ratings]}} from `metarec bench --scale`'s
    JSON; values that a log axis cannot show (missing, zero, negative) are left out."""
    sizes = bench.get("sizes") if isinstance(bench, dict) else None
    if not isinstance(sizes, list) or not sizes:
        raise UserError("the benchmark JSON has no \"sizes\" list: give the file that `metarec bench --scale` wrote")
    out: dict[str, dict[str, list[tuple[float, float]]]] = {"seconds": {}, "peak_rss_mb": {}}
    for size in sizes:
        ratings = size.get("ratings") if isinstance(size, dict) else None
        if not isinstance(ratings, (int, float)) or not isinstance(size.get("phases"), dict):
            raise UserError("each entry of the benchmark JSON's \"sizes\" needs \"ratings\" and \"phases\": "
                            "give the file that `metarec bench --scale` wrote")
        for phase, values in size["phases"].items():
            for key in out:
                v = values.get(key) if isinstance(values, dict) else None
                if isinstance(v, (int, float)) and v > 0:
                    out[key].setdefault(phase, []).append((float(ratings), float(v)))
    order = {p: i for i, p in enumerate(PHASES)}
    return {key: {p: sorted(series[p]) for p in sorted(series, key=lambda p: order.get(p, len(order)))}
            for key, series in out.items()}


def draw_scale(bench: dict, path: Path) -> tuple[Path, dict]:
    """Time and peak memory per phase against the number of ratings, both axes logarithmic."""
    series = scale_series(bench)
    fig, axes = _figure(1, 2)
    for ax, (key, label) in zip(axes[0], (("seconds", "seconds"), ("peak_rss_mb", "peak RSS (MB)"))):
        for phase, points in series[key].items():
            ax.plot(*zip(*points), marker="o", ms=3, label=phase)
        ax.set(xscale="log", yscale="log", xlabel="ratings", ylabel=label, title=f"{label} per phase")
        ax.grid(alpha=0.3, which="both")
        if series[key]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{bench.get('machine', 'machine not recorded')}, {bench.get('date', 'date not recorded')}", fontsize=8)
    return _save(fig, path), series


# ---- the page's section ----------------------------------------------------------------------------------
def page_section(runs: list[SeedRun], summary: dict, folder: Path, doc: Path) -> str:
    """Draw the per-state figures of the page's runs (the seeds every method has, as the tables) into
    `folder` and return the markdown that shows them from the page `doc`."""
    by_method: dict[str, dict[int, dict]] = {}
    for r in runs:
        if r.seed in summary["seeds"]:
            by_method.setdefault(r.method, {})[r.seed] = r.states
    transductive = set(summary.get("transductive", ()))
    first = next(iter(by_method.values()))
    states = [s for s in STATES if all(s in first[k] for k in first)]
    made = []
    diffs = floor_differences(by_method, states, transductive)
    png = draw_floor_differences(diffs, folder / "floor_differences.png")
    if png is not None:
        made.append(("Each method against the best floor of its input class (MAE; dot: paired difference over "
                     "identical tasks, combined over seeds; bar: 95% interval; left of zero beats the floor)", png))
    png = draw_support_curves(support_curves(by_method, states), folder / "support_curves.png")
    if png is not None:
        made.append(("MAE and nDCG@3 by support-set size (mean over seeds of each bucket's mean; dashed: the best "
                     "floor of each class): how fast each method learns a user", png))
    if not made:
        return ""
    lines = ["## Figures", ""]
    for caption, png in made:
        rel = Path(os.path.relpath(png.resolve(), doc.resolve().parent))  # GitHub renders a link relative to the page
        lines += [f"{caption}:", "", f"![{png.stem}]({rel.as_posix()})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """python -m metarec.reporting.results_figures scale BENCH.json --out docs/figures/scale.png"""
    p = argparse.ArgumentParser(prog="python -m metarec.reporting.results_figures", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="figure", required=True)
    scale = sub.add_parser("scale", help="time and memory per phase from `metarec bench --scale`'s JSON (log-log)")
    scale.add_argument("json", type=Path)
    scale.add_argument("--out", type=Path, default=Path("docs/figures/scale.png"))
    args = p.parse_args(argv)
    try:
        try:
            bench = json.loads(args.json.read_text())
        except OSError as e:
            raise UserError(f"cannot read {args.json} ({e.strerror or e}): give the JSON `metarec bench --scale` wrote") from None
        except ValueError as e:
            raise UserError(f"{args.json} is not JSON ({e}): give the JSON `metarec bench --scale` wrote") from None
        path, _ = draw_scale(bench, args.out)
    except UserError as e:
        print(f"metarec results_figures: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
