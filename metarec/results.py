"""`make results`: every method on ml-100k over 3 split seeds, through `metarec train`, into docs/results.md.

    python -m metarec.results --data-root ../shared/data/ml-100k      # train what is missing, then write the table
    python -m metarec.results --report-only                            # aggregate the runs already there

Each run is `metarec train experiment=melu_ml100k[_METHOD] seed=K` (split_seed follows seed), the
command a user types, in outputs/results/METHOD/seedK. The table gives, per state, MAE and nDCG@3
(both gains, named) as mean ± 95% CI over seeds, beside the floors on the same tasks; the best
meta-learner (by validation MAE, never a test number) is compared with pretrain and the best floor
by paired per-task differences: per seed the mean difference over identical tasks and its standard
error, combined over seeds as the mean of the seed means with SE = sqrt(sum SE_s^2) / n_seeds.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from metarec.errors import UserError
from metarec.evaluate import paired_difference

STATES = ("warm", "user_cold", "item_cold", "user_item_cold")
FLOORS = ("global_mean", "user_mean", "bias", "bias_transductive")
# method -> the overrides after `metarec train`; the tuned values live in the presets
# (conf/experiment/melu_ml100k*.yaml), each with a comment on how they were found.
METHODS: dict[str, list[str]] = {
    "maml": ["experiment=melu_ml100k"],
    "fomaml": ["experiment=melu_ml100k_fomaml"],
    "reptile": ["experiment=melu_ml100k_reptile"],
    "prompt (adapt=theta)": ["experiment=melu_ml100k_prompt"],
    "prompt (adapt=prompt)": ["experiment=melu_ml100k_prompt_adapt"],
    "ridge": ["experiment=melu_ml100k_ridge"],
    "pretrain": ["experiment=melu_ml100k_pretrain"],
}
BASELINE = "pretrain"  # not a meta-learner: never "the best meta-learner"
SEEDS = (0, 1, 2)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


@dataclass
class SeedRun:
    """What one finished run left: eval.json's states and the trainer's best validation MAE."""
    method: str
    seed: int
    states: dict
    best_val: float
    fingerprint: str | None = None  # run_info.json's SHA-256 of the data files it read


# ---- aggregation (no model code: reads eval.json and metrics.jsonl) -------------------------------
def headline(state: dict, metric: str) -> float:
    return state["steps"][str(state["headline_step"])][metric]


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


def load_run(path: Path, method: str, seed: int) -> SeedRun:
    doc = json.loads((path / "eval.json").read_text())
    vals = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    vals = [row["mae"] for row in vals if row.get("split") == "val" and "mae" in row]
    info = path / "run_info.json"
    fingerprint = json.loads(info.read_text()).get("data_fingerprint") if info.is_file() else None
    return SeedRun(method, seed, doc["states"], min(vals) if vals else float("nan"), fingerprint)


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
    table: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    for state in states:
        rows: dict[str, dict[str, tuple[float, float]]] = {}
        for m in methods:
            rows[m] = {k: mean_ci([headline(by_method[m][s][state], k) for s in seeds])
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
            floors = [f for f in FLOORS if f"floor: {f}" in table[state]]
            best_floor = min(floors, key=lambda f: table[state][f"floor: {f}"]["mae"][0])
            out = {"best_floor": best_floor}
            for metric in ("mae", "ndcg@3"):
                if BASELINE in by_method:
                    out[f"{metric} vs {BASELINE}"] = paired(by_method[best], by_method[BASELINE], state, metric)
                out[f"{metric} vs bias"] = paired(by_method[best], None, state, metric, "bias")
                out[f"{metric} vs {best_floor}"] = paired(by_method[best], None, state, metric, best_floor)
            out["ndcg@3 vs random"] = paired(by_method[best], None, state, "ndcg@3", "random")
            comparisons[state] = out
    return {"methods": methods, "seeds": seeds, "states": states, "table": table,
            "val_mae": {m: mean_ci(v) for m, v in val.items()}, "best": best, "comparisons": comparisons}


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
    """Two compact tables (MAE; nDCG@3 with gain 2^r-1 / linear), one column per state: README shows them."""
    states = summary["states"]
    rows = list(summary["table"][states[0]])
    out = ["## Summary", "", "MAE (mean over 3 seeds; lower is better):", "",
           "| method | " + " | ".join(states) + " |", "|---" * (len(states) + 1) + "|"]
    for name in rows:
        cells = [summary["table"][s].get(name, {}).get("mae") for s in states]
        if any(c is not None for c in cells):
            out.append(f"| {name} | " + " | ".join("" if c is None else f"{c[0]:.4f}" for c in cells) + " |")
    out += ["", "nDCG@3, gain 2^r-1 / gain linear (mean over seeds; higher is better):", "",
            "| method | " + " | ".join(states) + " |", "|---" * (len(states) + 1) + "|"]
    for name in rows:
        cells = [summary["table"][s].get(name, {}) for s in states]
        out.append(f"| {name} | " + " | ".join(f"{c['ndcg@3'][0]:.3f} / {c['ndcg_lin@3'][0]:.3f}" if "ndcg@3" in c else ""
                                               for c in cells) + " |")
    return out + [""]


def render(summary: dict, wall_s: float | None, hparams: dict[str, str], command: str,
           fingerprint: str | None = None, protocol: str = "") -> str:
    seeds = ", ".join(map(str, summary["seeds"]))
    lines = ["# Results on MovieLens-100K (MeLU's cold-start protocol)", "", *([protocol, ""] if protocol else []),
             f"Generated by `make results` (`{command}`)"
             + (f"; training and evaluating every run took {wall_s / 60:.1f} min wall time." if wall_s is not None else ".")
             + (f" Every run read the same copy of the data (SHA-256 fingerprint `{fingerprint[:16]}…` in each "
                "run_info.json)." if fingerprint else ""),
             f"Split seeds {seeds} (one run per method and seed: `metarec train experiment=... seed=K`; the split "
             "follows the seed). Cells: mean ± 95% CI over seeds (t-interval) of each run's mean over tasks. "
             "nDCG@3 is given with both gains: **2^r-1** (MeLU's) and **linear** (r). Floors are computed on "
             "the same tasks; `random` is the random-order nDCG.", ""]
    lines += summary_tables(summary)
    for state in summary["states"]:
        lines += [f"## {state}", "", "| method | MAE | nDCG@3 (gain 2^r-1) | nDCG@3 (gain linear) |", "|---|---|---|---|"]
        for name, row in summary["table"][state].items():
            mark = " (best meta-learner)" if name == summary["best"] else ""
            lines.append(f"| {name}{mark} | {_pm(row.get('mae'))} | {_pm(row.get('ndcg@3'))} | {_pm(row.get('ndcg_lin@3'))} |")
        lines.append("")
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
        lines += ["", "## Targets (ml-100k)", ""]
        for what, ok, numbers in targets(summary):
            lines.append(f"- {'reached' if ok else '**not reached**'}: {what}: {numbers}")
        lines.append("")
    if hparams:
        lines += ["## Hyper-parameters", "", "Chosen on validation users only (the trainer's best validation MAE); "
                  "each preset's header says how. Per method, the preset and its algorithm settings:", ""]
        lines += [f"- {m}: {h}" for m, h in hparams.items()]
        lines.append("")
    return "\n".join(lines)


# ---- running ------------------------------------------------------------------------------------------
def run_overrides(method: str, seed: int, data_root: str | None, threads: int) -> list[str]:
    extra = [f"data.root={data_root}"] if data_root else []
    return [*METHODS[method], f"seed={seed}", *extra, f"device.threads={threads}", "device=cpu", "trainer.progress=false"]


def compose(overrides: list[str]) -> dict:
    """The config `metarec train OVERRIDES` resolves to, as plain containers."""
    from hydra import compose as hydra_compose, initialize_config_module
    from omegaconf import OmegaConf
    from metarec.config import register
    register()
    with initialize_config_module("metarec.conf", version_base="1.3"):
        return OmegaConf.to_container(hydra_compose("config", overrides=overrides), resolve=True)


@functools.lru_cache(maxsize=None)
def preset(overrides: tuple[str, ...]):
    """A method's preset as an OmegaConf config, composed once per invocation (the hyper-parameter
    list and the protocol line both read it)."""
    from omegaconf import OmegaConf
    return OmegaConf.create(compose(list(overrides)))


def finished(folder: Path, overrides: list[str]) -> bool:
    """A finished run of exactly this config (a rerun of `make results` reuses it; an edited preset
    changes the config, and the run is trained again)."""
    try:
        status = json.loads((folder / "status.json").read_text())["status"]
        recorded = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return status == "finished" and (folder / "eval.json").is_file() and recorded == compose(overrides)


def train_one(folder: Path, overrides: list[str]) -> tuple[Path, int, float]:
    if folder.exists():
        shutil.rmtree(folder)  # an unfinished or outdated run of this results folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    metarec = Path(sys.executable).parent / "metarec"
    cmd = [str(metarec) if metarec.exists() else sys.executable, *([] if metarec.exists() else ["-m", "metarec.cli"]),
           "train", *overrides, f"hydra.run.dir={folder}"]
    t0 = time.perf_counter()
    with open(folder.parent / f"{folder.name}.log", "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    return folder, rc, time.perf_counter() - t0


def folder_of(out: Path, method: str, seed: int) -> Path:
    slug = method.replace(" (adapt=", "_").replace(")", "").replace(" ", "_")
    return out / slug / f"seed{seed}"


def preset_hparams(method: str) -> str:
    """The algorithm block a method's preset resolves to, read through Hydra's compose."""
    cfg = preset(tuple(METHODS[method]))
    a = cfg.algo
    keys = (["inner_steps", "eval_steps", "meta_lr"] if a.name == "ridge"  # no gradient steps in its inner loop
            else ["inner_lr", "inner_steps", "eval_steps", "first_order", "inner_params", "meta_lr", "learn_inner_lr"])
    keys += {"reptile": ["outer"], "prompt": ["adapt", "prompt_len", "prompt_dim"],
             "ridge": ["prior_precision", "prior_precision_factors", "prior_precision_bias", "learn_prior"]}.get(a.name, [])
    algo = ", ".join(f"{k}={a[k]}" for k in keys if a.get(k) is not None)
    return (f"`{' '.join(METHODS[method])}` (algo={a.name}: {algo}; trainer: max_steps={cfg.trainer.max_steps}, "
            f"meta_batch_size={cfg.trainer.meta_batch_size}, val_every={cfg.trainer.val_every}; "
            f"data.item_stats={cfg.data.item_stats}, data.item_ids={cfg.data.item_ids}, data.item_factors={cfg.data.item_factors})")


def protocol(methods: list[str]) -> str:
    """One line on the users' split and the training data, which every method must share: the floors
    and the paired differences assume the same tasks and the same training ratings."""
    data = {m: preset(tuple(METHODS[m])).data for m in methods}
    seen = {(tuple(d.split), d.heavy_users, d.min_ratings, d.max_ratings, d.query_size) for d in data.values()}
    if len(seen) > 1:
        raise UserError("the methods' presets split users or choose training ratings differently "
                        f"({', '.join(f'{m}: split={list(d.split)} heavy_users={d.heavy_users}' for m, d in data.items())}): "
                        "set data.split and data.heavy_users in melu_ml100k.yaml only")
    d = next(iter(data.values()))
    share = "/".join(f"{100 * x:g}" for x in d.split)
    heavy = ("the meta-train users above that train too (`data.heavy_users=true`; MeLU drops them)" if d.heavy_users
             else "users above that are dropped, as in MeLU")
    return (f"Protocol: users {share} meta-train / validation / test by the split seed; tasks of users with "
            f"{d.min_ratings}-{d.max_ratings} ratings in a partition, {d.query_size} query ratings; {heavy}.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m metarec.results", description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=os.environ.get("METAREC_ML100K"), help="a folder with ml-100k (else the cache / download)")
    p.add_argument("--out", type=Path, default=Path("outputs/results"), help="run folders (reused when finished with the same overrides)")
    p.add_argument("--doc", type=Path, default=Path("docs/results.md"))
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, each with --threads torch threads")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", action="store_true", help="aggregate the runs there, train nothing")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        line = protocol(args.methods)  # before any training: the methods must share tasks and training data
    except UserError as e:
        print(f"metarec results: error: {e}", file=sys.stderr)
        return 1
    todo = []
    for method in args.methods:
        for seed in args.seeds:
            folder = folder_of(args.out, method, seed)
            overrides = run_overrides(method, seed, args.data_root, args.threads)
            if not args.report_only and not finished(folder, overrides):
                todo.append((folder, overrides))
    if todo:
        print(f"metarec results: {len(todo)} runs to train, {args.jobs} at a time, into {args.out}", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            for folder, rc, secs in pool.map(lambda t: train_one(*t), todo):
                print(f"  {folder}: {'finished' if rc == 0 else f'FAILED (exit {rc}, see {folder}.log)'} in {secs:.0f} s", flush=True)
    runs, missing = [], []
    for method in args.methods:
        for seed in args.seeds:
            folder = folder_of(args.out, method, seed)
            if (folder / "eval.json").is_file():
                runs.append(load_run(folder, method, seed))
            else:
                missing.append(str(folder))
    if missing:
        print("metarec results: error: no eval.json in " + ", ".join(missing), file=sys.stderr)
        return 1
    copies = {r.fingerprint for r in runs} - {None}  # the data copies the runs read
    if len(copies) > 1:
        print(f"metarec results: error: the runs in {args.out} read {len(copies)} different copies of the data "
              f"(run_info.json fingerprints {', '.join(sorted(f[:12] for f in copies))}): move that folder aside and "
              f"run again with one --data-root", file=sys.stderr)
        return 1
    summary = summarize(runs)
    timing = args.out / "timing.json"  # the wall time of the invocation that trained every run
    if todo and len(todo) == len(args.methods) * len(args.seeds):
        timing.write_text(json.dumps({"wall_s": time.perf_counter() - t0, "runs": len(todo), "jobs": args.jobs,
                                      "threads": args.threads, "cpus": os.cpu_count()}) + "\n")
    wall = json.loads(timing.read_text())["wall_s"] if timing.is_file() else None
    argv = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m metarec.results", *[a for a in argv if a != "--report-only"]])
    text = render(summary, wall, {m: preset_hparams(m) for m in args.methods}, command, next(iter(copies), None), line)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(text + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=list) + "\n")
    print(text)
    print(f"metarec results: wrote {args.doc} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
