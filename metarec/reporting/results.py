"""`make results`: every method on ml-100k (and ml-1m) over 3 split seeds, through `metarec train`, into docs/.

    python -m metarec.reporting.results --data-root ../shared/data/ml-100k      # train what is missing, then write docs/results.md
    python -m metarec.reporting.results --data ml-1m --data-root ../shared/data/ml-1m   # the same for ml-1m: docs/results-ml1m.md
    python -m metarec.reporting.results --report-only                            # aggregate the runs already there

Each run is `metarec train experiment=melu_ml100k[_METHOD] seed=K` (split_seed follows seed), the
command a user types, in outputs/results/METHOD/seedK. This module trains what is missing and reads
the run folders through metarec.reporting.runs (the loader `metarec report` uses); metarec.reporting.results_page turns
them into the table: per state, MAE and nDCG@3 as mean ± 95% CI over seeds beside the floors on the
same tasks, and the best meta-learner (by validation MAE, never a test number) against pretrain and
the best floor by paired per-task differences.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import yaml

from metarec.reporting import catalog_page, results_figures, results_seeds, results_sets
from metarec.reporting import runs as run_folders
from metarec.reporting.runs import same_config
from metarec.config.compose import compose_plain
from metarec.errors import UserError
from metarec.reporting.results_page import SeedRun, render, shown_command, summarize
from metarec.run.run_lock import RunLock
from metarec.data.states import CUT_YEAR

# method -> the overrides after `metarec train`: which presets the page shows, under which names (each
# algorithm of metarec.algos.ALGOS has a row under its own name; tests/test_results.py holds them to it).
# The tuned values live in the presets (conf/experiment/melu_ml100k*.yaml), how they were found in
# docs/tuning.md. No row's input class is written here: each run's eval.json records it (TaskSource.input_class).
METHODS: dict[str, list[str]] = {
    "maml": ["experiment=melu_ml100k"],
    "fomaml": ["experiment=melu_ml100k_fomaml"],
    "reptile": ["experiment=melu_ml100k_reptile"],
    "prompt (adapt=theta)": ["experiment=melu_ml100k_prompt"],
    "prompt (adapt=prompt)": ["experiment=melu_ml100k_prompt_adapt"],
    "ridge": ["experiment=melu_ml100k_ridge"],
    "pretrain": ["experiment=melu_ml100k_pretrain"],
    "ridge_trans": ["experiment=melu_ml100k_trans"],
    "tanp": ["experiment=melu_ml100k_tanp"],
    "metaemb": ["experiment=melu_ml100k_metaemb"],  # a new item's ID embedding from its features
    "metaemb_warmup": ["experiment=melu_ml100k_metaemb_warmup"],  # + a warm-up on its visible ratings
    "mwuf": ["experiment=melu_ml100k_mwuf"],  # scaling / shifting from its visible ratings
    "melu_paper": ["experiment=melu_ml100k_paper"],
    "mamo": ["experiment=melu_ml100k_mamo"],
    "lwa": ["experiment=melu_ml100k_lwa"],  # the paper's: user tasks, a new item scored from its content
    "nlba": ["experiment=melu_ml100k_nlba"],
    "lwa_items": ["experiment=melu_ml100k_lwa_items"],  # the item-task transpose: a new item's scorer from its raters
    "nlba_items": ["experiment=melu_ml100k_nlba_items"],
}


def on_ml1m(methods: dict[str, list[str]]) -> dict[str, list[str]]:
    """The methods that have an ml-1m preset, in the same order: experiment=melu_ml100k_X runs on ml-1m as
    experiment=melu_ml1m_X where conf/experiment/melu_ml1m_X.yaml exists (the ml-100k settings, re-chosen
    where docs/tuning.md says)."""
    folder = resources.files("metarec.conf") / "experiment"
    out = {}
    for method, (preset, *rest) in methods.items():
        name = preset.removeprefix("experiment=").replace("melu_ml100k", "melu_ml1m", 1)
        if (folder / f"{name}.yaml").is_file():
            out[method] = [f"experiment={name}", *rest]
    return out


ML1M_METHODS = on_ml1m(METHODS)
SEEDS = (0, 1, 2)
DEFAULTS = {  # --data -> (the environment variable of its folder, --out, --doc)
    "ml-100k": ("METAREC_ML100K", Path("outputs/results"), Path("docs/results.md")),
    "ml-1m": ("METAREC_ML1M", Path("outputs/results-ml1m"), Path("docs/results-ml1m.md")),
    # beyond MovieLens: every ml-100k method on the data set's protocol (metarec/reporting/results_sets.py)
    "dbook": ("METAREC_DBOOK", Path("outputs/results-dbook"), Path("docs/results-dbook.md")),
    "dbook-metahin": ("METAREC_DBOOK", Path("outputs/results-dbook-metahin"), Path("docs/results-dbook-metahin.md")),
    "movietweetings": ("METAREC_MOVIETWEETINGS", Path("outputs/results-movietweetings"), Path("docs/results-movietweetings.md")),
}


def presets_of(data: str) -> dict[str, list[str]]:
    """method -> its preset's overrides, for one data set."""
    if data in results_sets.PROTOCOLS:
        return results_sets.presets(data, METHODS)
    return METHODS if data == "ml-100k" else ML1M_METHODS


def load_run(path: Path, method: str, seed: int) -> SeedRun:
    """A finished run of `method` and `seed`, read by metarec.reporting.runs (the loader `metarec report` uses)."""
    run = run_folders.load_run(path)
    return SeedRun(method, seed, run.states, run.best_val("mae"), run.data_fingerprint, run.data_root)


# ---- running ------------------------------------------------------------------------------------------
def run_overrides(method: str, seed: int, data_root: str | None, threads: int, data: str = "ml-100k") -> list[str]:
    extra = [f"data.root={data_root}"] if data_root else []
    return [*presets_of(data)[method], f"seed={seed}", *extra, f"device.threads={threads}", "device=cpu", "trainer.progress=false"]


@functools.lru_cache(maxsize=None)
def preset(overrides: tuple[str, ...]):
    """A method's preset as an OmegaConf config, composed once per invocation (the hyper-parameter
    list and the protocol line both read it)."""
    from omegaconf import OmegaConf
    return OmegaConf.create(compose_plain(list(overrides)))


def finished(folder: Path, overrides: list[str]) -> bool:
    """A finished run of exactly this config (a rerun of `make results` reuses it; an edited preset
    changes the config, and the run is trained again)."""
    try:
        status = json.loads((folder / "status.json").read_text())["status"]
        recorded = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return status == "finished" and (folder / "eval.json").is_file() and same_config(recorded, compose_plain(overrides))


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


def catalog_one(folder: Path, extra: list[str]) -> tuple[Path, int, float]:
    """The catalogue evaluation of a run's best checkpoint into RUN/catalog (catalog_page.eval_args)."""
    shutil.rmtree(folder / "catalog", ignore_errors=True)  # an unfinished evaluation's folder
    metarec = Path(sys.executable).parent / "metarec"
    cmd = [str(metarec) if metarec.exists() else sys.executable, *([] if metarec.exists() else ["-m", "metarec.cli"]),
           *catalog_page.eval_args(folder, extra)]
    t0 = time.perf_counter()
    with open(folder / "catalog.log", "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    return folder / "catalog", rc, time.perf_counter() - t0


def folder_of(out: Path, method: str, seed: int) -> Path:
    slug = method.replace(" (adapt=", "_").replace(")", "").replace(" ", "_")
    return out / slug / f"seed{seed}"


# the trainer and data keys each preset line shows beside the algorithm's: those the presets set apart
SHOWN_KEYS = {"trainer": ("max_steps", "meta_batch_size", "val_every"),
              "data": ("item_stats", "item_stats_transductive", "heavy_users", "item_ids", "item_factors")}


def preset_hparams(method: str, data: str = "ml-100k") -> str:
    """The algorithm block a method's preset resolves to, read through Hydra's compose: every key of the
    algorithm's schema but its name (null ones left out), then SHOWN_KEYS."""
    cfg = preset(tuple(presets_of(data)[method]))
    a = cfg.algo
    algo = ", ".join(f"{k}={v}" for k, v in a.items() if k != "name" and v is not None)
    trainer = ", ".join(f"{k}={cfg.trainer[k]}" for k in SHOWN_KEYS["trainer"])
    data_keys = ", ".join(f"data.{k}={cfg.data[k]}" for k in SHOWN_KEYS["data"])
    return f"`{' '.join(presets_of(data)[method])}` (algo={a.name}: {algo}; trainer: {trainer}; {data_keys})"


def protocol(methods: list[str], variant: str = "ml-100k") -> str:
    """One line on the users' split and the training data. Every method must share the split and the task
    filters (the floors and the paired differences assume the same tasks); data.heavy_users may differ
    (MeLU as published drops the heavy users): it changes the training ratings, not the evaluation
    tasks (metarec/data/movielens.py), and the line names the methods that differ."""
    data = {m: preset(tuple(presets_of(variant)[m])).data for m in methods}
    seen = {(tuple(d.split), d.min_ratings, d.max_ratings, d.query_size) for d in data.values()}
    if len(seen) > 1:
        raise UserError("the methods' presets split users or filter tasks differently "
                        f"({', '.join(f'{m}: split={list(d.split)} ratings={d.min_ratings}-{d.max_ratings}' for m, d in data.items())}): "
                        f"set data.split and the task filters in conf/protocol/{variant.replace('-', '')}.yaml only")
    heavy = [m for m, d in data.items() if d.heavy_users]
    d = data[heavy[0]] if heavy else next(iter(data.values()))
    share = "/".join(f"{100 * x:g}" for x in d.split)
    without = [m for m in data if m not in heavy]
    heavy_line = ("the meta-train users above that train too (`data.heavy_users=true`; MeLU drops them)"
                  + (f", except for {', '.join(without)}, which drop them as MeLU did (the same evaluation tasks)"
                     if without else "") if heavy else "users above that are dropped, as in MeLU")
    users = (f"users {share} meta-train / validation / test by the split seed" if d.get("test_user_field") is None else
             f"test users: those whose {d.test_user_field} is 1, the others {share[:share.rindex('/')]} meta-train / "
             "validation by the split seed")
    if d.name == "movielens":
        cut = d.cut_year if d.cut_year is not None else CUT_YEAR[d.variant]
        items = f"Items are new when the year in their title is after {cut} (the year every copy carries: docs/data.md)."
    else:
        c = d.cut
        items = (f"Items are new when {c.field} > {c.value} (data.cut)." if c.value is not None else
                 f"Items are new by the default cut: {c.new_ratings} of the ratings on new items, on "
                 f"{c.field or 'each item' + chr(39) + 's first rating time (random items without a time field)'}; "
                 "each run's eval.md names the cut chosen.")
    return (f"Protocol: {users}; tasks of users with "
            f"{d.min_ratings}-{d.max_ratings} ratings in a partition, {d.query_size} query ratings; {heavy_line}. {items}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m metarec.reporting.results", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="ml-100k", choices=list(DEFAULTS), help="the data set (its presets: METHODS, ML1M_METHODS)")
    p.add_argument("--data-root", help="a folder with the data set (default: $METAREC_ML100K / $METAREC_ML1M, else the cache / download)")
    p.add_argument("--out", type=Path, help="run folders, reused when finished with the same overrides "
                   "(default: outputs/results, outputs/results-ml1m)")
    p.add_argument("--doc", type=Path, help="the page (default: docs/results.md, docs/results-ml1m.md)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--methods", nargs="+", help="a subset of the data set's methods (default: all of them)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, each with --threads torch threads")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", action="store_true", help="aggregate the runs there, train nothing")
    return p


def train_missing(args: argparse.Namespace) -> list[str]:
    """Train every (method, seed) without a finished run of its exact config; returns their folders."""
    todo = []
    for method in args.methods:
        for seed in args.seeds:
            folder = folder_of(args.out, method, seed)
            overrides = run_overrides(method, seed, args.data_root, args.threads, args.data)
            if not args.report_only and not finished(folder, overrides):
                todo.append((folder, overrides))
    if todo:
        print(f"metarec results: {len(todo)} runs to train, {args.jobs} at a time, into {args.out}", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            for folder, rc, secs in pool.map(lambda t: train_one(*t), todo):
                print(f"  {folder}: {'finished' if rc == 0 else f'FAILED (exit {rc}, see {folder}.log)'} in {secs:.0f} s", flush=True)
    done = [str(folder) for folder, _ in todo]
    catalog = [] if args.report_only else catalog_page.missing(lambda m, k: folder_of(args.out, m, k), args.methods, args.seeds)
    if catalog:  # the page's catalogue section, part of this invocation's wall time
        extra = [*([f"data.root={args.data_root}"] if args.data_root else []), f"device.threads={args.threads}",
                 "device=cpu", "trainer.progress=false"]
        print(f"metarec results: {len(catalog)} catalogue evaluations (eval.ranking=catalog)", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            for folder, rc, secs in pool.map(lambda f: catalog_one(f, extra), catalog):
                print(f"  {folder}: {'finished' if rc == 0 else f'FAILED (exit {rc}, see {folder}.log)'} in {secs:.0f} s", flush=True)
                done.append(str(folder))
    return done


def load_runs(args: argparse.Namespace) -> list[SeedRun]:
    """Every (method, seed) run of the page, all of them read from one copy of the data."""
    runs, missing = [], []
    for method in args.methods:
        for seed in args.seeds:
            folder = folder_of(args.out, method, seed)
            if (folder / "eval.json").is_file():
                runs.append(load_run(folder, method, seed))
            else:
                missing.append(str(folder))
    if missing:
        raise UserError("no eval.json in " + ", ".join(missing))
    copies = {r.fingerprint for r in runs} - {None}  # the data copies the runs read
    if len(copies) > 1:
        raise UserError(f"the runs in {args.out} read {len(copies)} different copies of the data "
                        f"(run_info.json fingerprints {', '.join(sorted(f[:12] for f in copies))}): move that folder "
                        "aside and run again with one --data-root")
    return runs


def record_timing(args: argparse.Namespace, trained: list[str], wall_s: float) -> None:
    """Append this invocation's wall time and the runs it trained to OUT/timing.json."""
    timing = args.out / "timing.json"
    log = read_timing(timing)
    log.append({"runs": trained, "wall_s": wall_s, "jobs": args.jobs, "threads": args.threads, "cpus": os.cpu_count()})
    timing.write_text(json.dumps({"invocations": log}, indent=1) + "\n")


def read_timing(timing: Path) -> list[dict]:
    """The invocations that trained runs here (a file that holds one invocation without "invocations" names no runs)."""
    if not timing.is_file():
        return []
    data = json.loads(timing.read_text())
    return data.get("invocations", [{**data, "runs": []}])


def training_wall(args: argparse.Namespace) -> tuple[float, int] | None:
    """The wall time that trained the page's runs and in how many invocations: the sum over the
    invocations whose runs are still the ones there (an invocation all of whose runs a later one trained
    again does not count); None when some run of the page was trained by no recorded invocation."""
    pages = {str(folder_of(args.out, m, s)) for m in args.methods for s in args.seeds}
    catalog = [folder_of(args.out, m, s) / "catalog" for m in args.methods for s in args.seeds]
    pages |= {str(c) for c in catalog if c.is_dir()}  # the catalogue evaluations are part of the page's time
    owner: dict[str, int] = {}
    log = read_timing(args.out / "timing.json")
    for i, inv in enumerate(log):
        for run in inv["runs"]:
            owner[run] = i
    if not pages <= owner.keys():
        return None
    used = {owner[p] for p in pages}
    return sum(log[i]["wall_s"] for i in used), len(used)


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The arguments, with each data set's defaults filled in."""
    p = parser()
    args = p.parse_args(argv)
    env, out, doc = DEFAULTS[args.data]
    args.data_root = args.data_root or os.environ.get(env)
    args.out, args.doc = args.out or out, args.doc or doc
    known = list(presets_of(args.data))
    args.methods = args.methods or known
    unknown = [m for m in args.methods if m not in known]
    if unknown:
        p.error(f"--methods {' '.join(unknown)}: {args.data} has {', '.join(known)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    t0 = time.perf_counter()
    try:
        line = protocol(args.methods, args.data)  # before any training: the methods must share tasks and training data
        if args.data in results_sets.PROTOCOLS:  # the ml-100k methods a data set cannot run, and why
            line = " ".join(filter(None, [line, results_sets.skipped_line(args.data, METHODS)]))
        args.out.mkdir(parents=True, exist_ok=True)
        lock = RunLock.take(args.out, "results", "choose another --out")  # one invocation per results folder
        trained = train_missing(args)
        if trained:  # recorded before anything else can fail: the training happened
            record_timing(args, trained, time.perf_counter() - t0)
        runs = load_runs(args)
        summary = summarize(runs)  # refuses a state with too few tasks; each row's class as its eval.json recorded it
    except UserError as e:
        print(f"metarec results: error: {e}", file=sys.stderr)
        return 1
    wall = training_wall(args)
    fingerprint = next(iter({r.fingerprint for r in runs} - {None}), None)
    folders = {Path(r.data_root).name for r in runs if r.data_root}
    folder = folders.pop() if len(folders) == 1 else None  # the data copy by name; its path is this machine's
    command = shown_command(sys.argv[1:] if argv is None else argv, folder)
    text = render(summary, wall, {m: preset_hparams(m, args.data) for m in args.methods}, command, fingerprint, line,
                  folder, args.data)
    text += "\n" + catalog_page.from_folders(lambda m, k: folder_of(args.out, m, k), args.methods, args.seeds)
    text += "\n" + results_figures.page_section(runs, summary, args.doc.parent / "figures" / args.data, args.doc)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    folders = {(m, s): folder_of(args.out, m, s) for m in args.methods for s in args.seeds}
    text += "\n" + results_seeds.publish(args.doc, results_seeds.collect(folders, presets_of(args.data), args.data))
    args.doc.write_text(text + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=list) + "\n")
    print(text)
    print(f"metarec results: wrote {args.doc} ({time.perf_counter() - t0:.0f} s)")
    lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
