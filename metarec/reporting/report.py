"""Summarise run folders (one run, or a Hydra sweep) into report.md, CSV tables and PNG plots.

    metarec report outputs/multirun/2024-05-01/12-00-00     # writes into that sweep folder
    metarec report RUN_A RUN_B --out reports/a_vs_b           # several folders, one report

Reads only what training and evaluation leave on disk (.hydra/, status.json, run_info.json,
metrics.jsonl, eval.json), through metarec.reporting.runs' loader, so it needs no model code and works on runs
copied off a cluster.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import statistics
import sys
from pathlib import Path

from metarec import inputs
from metarec.errors import UserError
from metarec.reporting.runs import Run, find_runs, headline, is_run_folder, load_run, lookup, number

SWEEP_HINT = "point metarec report at a sweep folder such as outputs/multirun/DATE/TIME"
# Table columns: the first group with a metric present wins (MovieLens, then sinusoid / omniglot).
PREFERRED = (("mae", "ndcg@3"), ("mse", "acc"))
RUN_COLUMNS = ["run", "overrides", "algo", "data", "status", "reason"]  # then metrics, train_time_s


def state_metrics(runs: list[Run]) -> dict[str, list[str]]:
    """state -> metric names at the headline step (no _ci), the preferred ones first."""
    seen: dict[str, list[str]] = {}
    for run in runs:
        for state, doc in run.states.items():
            names = seen.setdefault(state, [])
            names += [m for m, v in headline(doc).items()
                      if not m.endswith("_ci") and m not in names and number(v) is not None]
    return {state: _preferred(names) + [m for m in names if m not in _preferred(names)]
            for state, names in seen.items()}


def run_rows(runs: list[Run], metrics: dict[str, list[str]]) -> tuple[list[str], list[dict]]:
    """The per-run table: header and one dict per run (None where a value is missing)."""
    header = list(RUN_COLUMNS)
    for state, names in metrics.items():
        for m in names:
            header.append(f"{state}_{m}")
            if any(f"{m}_ci" in headline(run.states.get(state, {})) for run in runs):
                header.append(f"{state}_{m}_ci")
    header.append("train_time_s")
    rows = []
    for run in runs:
        row = {"run": run.name, "overrides": " ".join(run.overrides), "status": run.status,
               "reason": run.reason, "algo": lookup(run.config, "algo", "name"),
               "data": lookup(run.config, "data", "name"), "train_time_s": number(run.info.get("train_time_s"))}
        for state in metrics:
            for m, v in headline(run.states.get(state, {})).items():
                if f"{state}_{m}" in header:
                    row[f"{state}_{m}"] = number(v)
        rows.append({k: row.get(k) for k in header})
    return header, rows


def aggregate(runs: list[Run], header: list[str], rows: list[dict]) -> tuple[list[str], list[dict]]:
    """Mean and sample std (ddof=1) over the seeds of each configuration; finished runs only."""
    columns = [c for c in header if c not in RUN_COLUMNS and not c.endswith("_ci")]
    groups: dict[str, list[tuple[Run, dict]]] = {}
    for run, row in zip(runs, rows):
        if run.status == "finished":
            groups.setdefault(run.configuration, []).append((run, row))
    out_header = ["configuration", "n_seeds", "seeds"] + [f"{c}_{s}" for c in columns for s in ("mean", "std")]
    out = []
    for configuration, members in groups.items():
        agg = {"configuration": configuration, "n_seeds": len(members),
               "seeds": " ".join(str(r.seed) for r, _ in members if r.seed is not None)}
        for c in columns:
            values = [row[c] for _, row in members if row[c] is not None]
            agg[f"{c}_mean"] = statistics.fmean(values) if values else None
            agg[f"{c}_std"] = statistics.stdev(values) if len(values) > 1 else None
        out.append(agg)
    return out_header, out


def write_report(runs: list[Run], out: Path, sources: list[str]) -> list[Path]:
    """Write report.md, report.csv, report_aggregate.csv and the plots into out; return their paths."""
    metrics = state_metrics(runs)
    header, rows = run_rows(runs, metrics)
    agg_header, agg_rows = aggregate(runs, header, rows)
    out.mkdir(parents=True, exist_ok=True)
    written = [_write_csv(out / "report.csv", header, rows),
               _write_csv(out / "report_aggregate.csv", agg_header, agg_rows)]
    labels = _labels(runs)
    val_png = plot_val_curves(runs, labels, out / "val_curves.png")
    adapt_png = plot_adaptation(runs, labels, metrics, out / "adaptation.png")
    written += [p for p in (val_png, adapt_png) if p is not None]

    shown = {state: _preferred(names) or names[:2] for state, names in metrics.items()}
    counts = {s: sum(r.status == s for r in runs) for s in dict.fromkeys(r.status for r in runs)}
    md = ["# metarec report", "",
          f"Sources: {', '.join(f'`{s}`' for s in sources)}  ",
          f"Runs: {len(runs)} ({', '.join(f'{n} {s}' for s, n in counts.items())})", "",
          "Metrics are at the last adaptation step in each run's eval.json.", "",
          "## Runs", "", "Value ± the run's confidence interval (the `_ci` in eval.json).", ""]
    cols = [f"{state} {m}" for state, names in shown.items() for m in names]
    table = []
    for row in rows:
        cells = [row["run"], row["overrides"], row["status"]]
        cells += [_pm(row.get(f"{s}_{m}"), row.get(f"{s}_{m}_ci")) for s, names in shown.items() for m in names]
        table.append(cells + [_fmt(row["train_time_s"], 1)])
    md += _md_table(["run", "overrides", "status"] + cols + ["train_time_s"], table)

    md += ["", "## Aggregate over seeds", "", "Mean ± sample std (ddof=1) over the finished seeds of each configuration.", ""]
    if agg_rows:
        table = [[a["configuration"], a["n_seeds"]]
                 + [_pm(a[f"{s}_{m}_mean"], a[f"{s}_{m}_std"]) for s, names in shown.items() for m in names]
                 + [_pm(a["train_time_s_mean"], a["train_time_s_std"], 1)] for a in agg_rows]
        md += _md_table(["configuration", "seeds"] + cols + ["train_time_s"], table)
    else:
        md.append("No finished runs to aggregate.")

    unfinished = [r for r in runs if r.status != "finished"]
    if unfinished:
        md += ["", "## Not finished", ""]
        md += _md_table(["run", "overrides", "status", "step", "reason"],
                        [[r.name, " ".join(r.overrides), r.status, "" if r.step is None else r.step,
                          _one_line(r.reason)] for r in unfinished])

    floors = _floor_rows(runs)
    if floors:
        md += ["", "## Floors", "", "Baselines that need no training, from eval.json.", ""]
        md += _md_table(["data", "state", "floor", "metrics"], floors)

    md += ["", "## Plots", ""]
    md.append("![validation curves](val_curves.png)" if val_png else "No validation metrics in any metrics.jsonl.")
    md.append("")
    md.append("![metric by adaptation step](adaptation.png)" if adapt_png else "No eval.json to plot.")
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return [out / "report.md"] + written


def plot_val_curves(runs: list[Run], labels: dict[str, str], path: Path) -> Path | None:
    """Validation MAE (or the first validation metric logged) over training steps, one line per run."""
    metric = _val_metric(runs)
    if metric is None:
        return None
    fig, ax = _figure(1)
    for run in runs:
        points = sorted((row["step"], number(row.get(metric))) for row in run.val
                        if isinstance(row.get("step"), (int, float)) and number(row.get(metric)) is not None)
        if points:
            ax[0].plot(*zip(*points), marker="o" if len(points) < 20 else None, ms=3, label=labels[run.name])
    ax[0].set(xlabel="training step", ylabel=f"validation {metric}", title=f"validation {metric}")
    ax[0].grid(alpha=0.3)
    _legend(ax[0], len(runs))
    return _save(fig, path)


def plot_adaptation(runs: list[Run], labels: dict[str, str], metrics: dict[str, list[str]],
                    path: Path) -> Path | None:
    """One subplot per state: its first preferred metric against the adaptation step, with the CI."""
    if not metrics:
        return None
    fig, axes = _figure(len(metrics))
    for ax, (state, names) in zip(axes, metrics.items()):
        metric = names[0]
        for run in runs:
            steps = run.states.get(state, {}).get("steps") or {}
            points = sorted((int(k), number(v.get(metric)), number(v.get(f"{metric}_ci")) or 0.0)
                            for k, v in steps.items()
                            if re.fullmatch(r"-?\d+", str(k)) and isinstance(v, dict) and number(v.get(metric)) is not None)
            if points:
                x, y, ci = zip(*points)
                line, = ax.plot(x, y, marker="o", ms=3, label=labels[run.name])
                ax.fill_between(x, [a - c for a, c in zip(y, ci)], [a + c for a, c in zip(y, ci)],
                                color=line.get_color(), alpha=0.15, lw=0)
        floors = next((run.states[state].get("floors") for run in runs
                       if isinstance(run.states.get(state, {}).get("floors"), dict)), {})
        for name, values in floors.items():
            value = number(values.get(metric)) if isinstance(values, dict) else None
            if value is not None:
                ax.axhline(value, color="gray", ls="--", lw=0.8)
                ax.annotate(name, (1.0, value), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                            fontsize=7, color="gray")
        ax.set(xlabel="adaptation step", ylabel=metric, title=state)
        ax.grid(alpha=0.3)
    _legend(axes[0], len(runs))
    return _save(fig, path)


def main(argv: list[str]) -> int:
    """`metarec report DIR [DIR...] [--out OUTDIR]`; argv is what follows `report`."""
    parser = argparse.ArgumentParser(prog="metarec report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="a sweep folder (outputs/multirun/DATE/TIME) or run folder")
    parser.add_argument("--out", metavar="OUTDIR", help="where to write (default: the sweep folder when one is given, else .)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse has printed usage and the error already
        return stop.code if isinstance(stop.code, int) else 2
    try:
        single_sweep = len(args.dirs) == 1 and Path(args.dirs[0]).is_dir() and not is_run_folder(Path(args.dirs[0]))
        out = Path(args.out) if args.out else Path(args.dirs[0]) if single_sweep else Path.cwd()
        runs = _collect([Path(d) for d in args.dirs], out)
        try:
            write_report(runs, out, args.dirs)
        except OSError as err:
            raise UserError(f"cannot write the report into {out}: {err.strerror or err}; pass a writable --out") from None
    except UserError as err:
        print(f"metarec report: {err}", file=sys.stderr)
        return 2
    for run in runs:  # one line per damaged run: what could not be read, and what the run was counted as
        if run.damage:
            print(f"metarec report: {run.name}: {'; '.join(run.damage)}; counted as {run.status}"
                  f"{' (its eval.json has results)' if run.status == 'finished' else ''}", file=sys.stderr)
    counts = ", ".join(f"{sum(r.status == s for r in runs)} {s}" for s in dict.fromkeys(r.status for r in runs))
    print(f"wrote {out / 'report.md'} ({len(runs)} runs: {counts})")
    return 0


def _collect(dirs: list[Path], out: Path) -> list[Run]:
    runs, seen = [], set()
    for d in dirs:
        if not d.exists():
            raise UserError(f"no such folder: {d}; {SWEEP_HINT}")
        if not d.is_dir():
            raise UserError(f"not a folder: {d} is {inputs.kind_of(d.stat().st_mode)}; {SWEEP_HINT}")
        paths = find_runs(d)
        if not paths:
            raise UserError(f"no runs found under DIR: {d} holds no run folder (.hydra/, status.json or eval.json); "
                            f"{SWEEP_HINT}")
        for path in paths:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                try:
                    name = path.resolve().relative_to(out.resolve()).as_posix() or "."
                except ValueError:
                    name = path.as_posix()
                runs.append(load_run(path, name))
    return runs


def _preferred(names: list[str]) -> list[str]:
    for group in PREFERRED:
        if any(m in names for m in group):
            return [m for m in group if m in names]
    return []


def _val_metric(runs: list[Run]) -> str | None:
    rows = [row for run in runs for row in run.val]
    if any(number(row.get("mae")) is not None for row in rows):
        return "mae"
    for row in rows:
        for key, value in row.items():
            if key not in ("step", "split") and not key.endswith("_ci") and number(value) is not None:
                return key
    return None


def _labels(runs: list[Run]) -> dict[str, str]:
    # Only the overrides that differ between runs: the shared ones would only crowd the legend.
    common = set.intersection(*(set(r.overrides) for r in runs)) if len(runs) > 1 else set()
    labels, used = {}, set()
    for run in runs:
        label = " ".join(o for o in run.overrides if o not in common) or run.name
        labels[run.name] = label if label not in used else f"{label} [{run.name}]"
        used.add(label)
    return labels


def _floor_rows(runs: list[Run]) -> list[list]:
    rows, seen = [], set()
    for run in runs:
        data = lookup(run.config, "data", "name") or ""
        for state, doc in run.states.items():
            floors = doc.get("floors") if isinstance(doc, dict) else None
            if not isinstance(floors, dict) or (data, state) in seen:
                continue
            seen.add((data, state))
            for name, values in floors.items():
                if isinstance(values, dict):
                    text = ", ".join(f"{m} {_fmt(number(v))}" for m, v in values.items() if number(v) is not None)
                    rows.append([data, state, name, text])
    return rows


def _figure(n: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.5 * ncols + (1.5 if n == 1 else 0), 3.6 * nrows), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas, without pyplot's global state
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _legend(ax, n_lines: int) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small" if n_lines <= 8 else 6, ncol=1 if n_lines <= 16 else 2)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def _fmt(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _pm(value, spread, digits: int = 4) -> str:
    if value is None:
        return ""
    return _fmt(value, digits) + ("" if spread is None else f" ± {_fmt(spread, digits)}")


def _one_line(text: str | None, limit: int = 200) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def _write_csv(path: Path, header: list[str], rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
