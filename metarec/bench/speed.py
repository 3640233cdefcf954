"""Meta-training throughput on real ml-100k episodes, one row per algorithm of the registry
(metarec.algos.ALGOS): the engine (the code path users run) against the per-task reference loop where
the package has one, and one plain supervised step over the same ratings.

    metarec bench --out bench.json      # every algorithm (per-task loops at batch 256: most of the time)
    metarec bench --algos reptile mamo --batch-sizes 32 --inner-steps 5   # a part of it
    metarec bench --quick               # a small grid (< 1 min)
    metarec bench --device cuda         # the same grid on a GPU (the episodes live on it too)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import metarec
from metarec.algos import ALGOS
from metarec.bench.rows import (HEADER, base_overrides, bench_grid, build_algo, format_row, peak_rss_mb,  # noqa: F401
                                synchronizer, time_interleaved)
from metarec.config.compose import compose
from metarec.errors import UserError
from metarec.run.device import cpu_count

REPO = Path(__file__).resolve().parents[2]  # the checkout: metarec/bench/speed.py is two folders down
SHARED_ML100K = REPO.parent / "shared" / "data" / "ml-100k"
QUICK = ["maml"]  # --quick's algorithms
ML1M_SHAPE = dict(users=6040, items=3706, ratings=1_000_209)


def bench_eval(source, repeats: int, steps: int = 5) -> dict:
    """Seconds to evaluate every user_cold task after 0..steps adaptation steps (the trainer's path)."""
    from metarec.evaluation.evaluate import evaluate_state
    cfg = compose(base_overrides(source) + ["algo=maml"])
    algo = build_algo(cfg, source)
    batch = source.eval_tasks("test")["user_cold"]

    def run():
        evaluate_state(algo, batch, source.kind, steps, cfg.eval.ndcg_gain, cfg.eval.chunk, cfg.seed)
    run()
    sync, times = synchronizer(source.device), []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t0)
    return {"state": "user_cold", "tasks": batch.n_tasks, "steps": steps, "seconds": statistics.median(times)}


def bench_compile(source, meta_batch: int, steps: int, repeats: int, min_time: float) -> dict:
    """trainer.compile=true (maml, first order: second order runs the written-out SecondOrderMAML, which
    stays eager): the one-off compile time apart from tasks/s."""
    cfg = compose(base_overrides(source) + ["algo=maml", "algo.first_order=true", f"algo.inner_steps={steps}",
                                            f"trainer.meta_batch_size={meta_batch}", "trainer.compile=true"])
    generator = torch.Generator().manual_seed(0)
    batches = [source.sample_train(meta_batch, generator) for _ in range(4)]
    algo = build_algo(cfg, source)
    sync = synchronizer(source.device)
    t0 = time.perf_counter()
    algo.step(batches[0])
    sync()
    first = time.perf_counter() - t0
    times = time_interleaved({"engine": algo.step}, batches, repeats, min_time, sync)["engine"]
    step = statistics.median(times)
    return {"algo": "maml", "meta_batch": meta_batch, "inner_steps": steps, "first_order": True,
            "compile_s": max(first - step, 0.0), "tasks_per_s": meta_batch / step}


# ---- ml-1m-sized synthetic run ---------------------------------------------------------------------

GENRES_1M = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
             "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def write_synthetic_ml1m(folder: Path, users: int = ML1M_SHAPE["users"], items: int = ML1M_SHAPE["items"],
                         ratings: int = ML1M_SHAPE["ratings"], seed: int = 0) -> None:
    """A MovieLens-1M-shaped data set in GroupLens '::' format (by default 6,040 users, 3,706 movies,
    1,000,209 ratings): each user >= 20 ratings, popularity-skewed movies, no repeated (user, movie)."""
    rng = np.random.default_rng(seed)
    n_users, n_items, n_ratings = users, items, ratings
    counts = rng.lognormal(4.4, 1.0, n_users)
    counts = np.minimum(20 + np.round(counts * (n_ratings - 20 * n_users) / counts.sum()), n_items).astype(np.int64)
    diff = n_ratings - int(counts.sum())  # exact total: move the rounding to users with room
    room = n_items - counts if diff > 0 else counts - 20
    for k in np.argsort(-room):
        move = min(abs(diff), int(room[k]))
        counts[k] += move if diff > 0 else -move
        diff += -move if diff > 0 else move
        if diff == 0:
            break
    popularity = rng.pareto(1.2, n_items) + 1
    popularity /= popularity.sum()
    items = np.concatenate([rng.choice(n_items, size=c, replace=False, p=popularity) for c in counts])
    users = np.repeat(np.arange(n_users), counts)
    stars = rng.integers(1, 6, n_ratings)
    stamps = 956_703_932 + rng.integers(0, 90_000_000, n_ratings)
    lines = [f"{u + 1}::{i + 1}::{r}::{t}"
             for u, i, r, t in zip(users.tolist(), items.tolist(), stars.tolist(), stamps.tolist())]
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
    ages, gender = [1, 18, 25, 35, 45, 50, 56], ["M", "F"]
    (folder / "users.dat").write_text("".join(
        f"{u + 1}::{gender[rng.integers(2)]}::{ages[rng.integers(7)]}::{rng.integers(21)}::{rng.integers(10000, 99999)}\n"
        for u in range(n_users)))
    movies = []
    for i in range(n_items):
        genres = "|".join(rng.choice(GENRES_1M, size=rng.integers(1, 4), replace=False))
        movies.append(f"{i + 1}::Movie {i + 1} ({rng.integers(1919, 2001)})::{genres}\n")
    (folder / "movies.dat").write_text("".join(movies), encoding="latin-1")


def ml1m_child(folder: str, steps: int, meta_batch: int, inner_steps: int) -> None:
    """Run in a fresh process: load the synthetic ml-1m, meta-train `steps` steps, validate once;
    print the process's peak RSS as JSON."""
    from metarec.evaluation.evaluate import evaluate_all
    from metarec.run.train import build
    cfg = compose(["device=cpu", "trainer.progress=false", "data.variant=ml-1m", f"data.root={folder}",
                   "algo=maml", f"algo.inner_steps={inner_steps}", f"trainer.meta_batch_size={meta_batch}"])
    t0 = time.perf_counter()
    source, _, algo = build(cfg, torch.device("cpu"), progress=False)
    load_s = time.perf_counter() - t0
    generator = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        algo.step(source.sample_train(meta_batch, generator))
    train_s = time.perf_counter() - t0
    evaluate_all(cfg, source, algo, "val", select=True)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "load_s": load_s, "train_steps": steps, "meta_batch": meta_batch,
                      "inner_steps": inner_steps, "tasks_per_s": steps * meta_batch / train_s,
                      "ratings": int(len(source.raw.rating)), "users": int(len(source.raw.user_gender))}))


def bench_ml1m(threads: int, steps: int = 20, meta_batch: int = 32, inner_steps: int = 5) -> dict:
    with tempfile.TemporaryDirectory(prefix="metarec-ml1m-") as tmp:
        write_synthetic_ml1m(Path(tmp))
        code = (f"import torch; torch.set_num_threads({threads}); from metarec.bench.speed import ml1m_child; "
                f"ml1m_child({tmp!r}, {steps}, {meta_batch}, {inner_steps})")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"the ml-1m-sized run failed:\n{done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the command ------------------------------------------------------------------------------------

def default_root() -> str | None:
    return str(SHARED_ML100K) if (SHARED_ML100K / "u.data").exists() else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="metarec bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the JSON result here")
    parser.add_argument("--data-root", default=default_root(),
                        help="ml-100k folder (default: ../shared/data/ml-100k if present, else the cache or a download)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per measurement (the median is reported)")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds each timed round lasts at least")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores this process may use)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where the models and episodes live (the ml-1m-sized RSS run stays on the CPU)")
    parser.add_argument("--quick", action="store_true", help=f"a small grid ({', '.join(QUICK)}, meta-batch 32, 5 steps), no ml-1m run")
    parser.add_argument("--algos", nargs="+", metavar="NAME", help="only these algorithms (default: all; e.g. --algos tanp)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, metavar="B", help="meta-batch sizes (default: 32 256)")
    parser.add_argument("--inner-steps", nargs="+", type=int, metavar="K",
                        help="inner steps, for the algorithms that take them (default: 1 5)")
    parser.add_argument("--no-compile", action="store_true", help="skip the trainer.compile=true measurement")
    parser.add_argument("--no-ml1m", action="store_true", help="skip the ml-1m-sized peak RSS run")
    args = parser.parse_args(argv)

    threads = args.threads or cpu_count()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run(args, threads)
    finally:
        torch.set_num_threads(before)  # main() may be called in a process that goes on (tests)


def run(args: argparse.Namespace, threads: int) -> int:
    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.quick:
        names, batch_sizes, inner_steps = QUICK, [32], [5]
        repeats, min_time = min(args.repeats, 3), min(args.min_time, 0.1)
    else:
        names, batch_sizes, inner_steps, repeats, min_time = list(ALGOS), [32, 256], [1, 5], args.repeats, args.min_time
    if args.algos:
        unknown = sorted(set(args.algos) - set(ALGOS))
        if unknown:
            print(f"metarec: error: --algos {' '.join(unknown)}: the algorithms are {', '.join(ALGOS)}", file=sys.stderr)
            return 2
        names = args.algos
    if any(b < 1 for b in args.batch_sizes or []) or any(k < 0 for k in args.inner_steps or []):
        print("metarec: error: --batch-sizes must be >= 1 and --inner-steps >= 0", file=sys.stderr)
        return 2
    if args.batch_sizes:
        batch_sizes = args.batch_sizes
    if args.inner_steps:
        inner_steps = args.inner_steps

    from metarec.data import build_source
    from metarec.run.device import resolve_device
    try:
        device = resolve_device(args.device)
        cfg = compose([f"device={args.device}", *([f"data.root={args.data_root}"] if args.data_root else [])])
        source = build_source(cfg.data, device, cfg.seed, progress=False)
    except UserError as e:
        print(f"metarec: error: {e}", file=sys.stderr)
        return 2
    machine = {"torch": torch.__version__, "python": platform.python_version(), "threads": threads,
               "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "device": str(device),
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "metarec": metarec.__version__, "data": str(source.folder), "load_before": os.getloadavg()[0]}
    log(f"metarec bench: torch {machine['torch']}, {machine['gpu'] or 'CPU'}, {threads} threads, data {machine['data']}, "
        f"load average {machine['load_before']:.1f} (other work on the machine slows every row)")
    if machine["load_before"] > 0.5 * cpu_count() and threads > 1:
        log(f"warning: the machine is busy (load {machine['load_before']:.1f}): {threads} threads wait on each other "
            f"behind other processes and every row slows unevenly; --threads 1 measures more fairly")
    log("tasks/s (median of rounds after warm-up); eng step/sup step = engine step time / supervised step time")
    log(HEADER)
    rows = bench_grid(source, names, batch_sizes, inner_steps, repeats, min_time, log)
    result = {"machine": machine, "rows": rows}

    result["evaluation"] = ev = bench_eval(source, repeats=3)
    log(f"evaluation: all {ev['tasks']} {ev['state']} tasks, 0..{ev['steps']} steps: {ev['seconds']:.3f} s")
    if not args.quick and not args.no_compile:
        result["compile"] = c = bench_compile(source, 32, 5, repeats, min_time)
        log(f"trainer.compile=true (maml first order, batch 32, 5 steps): {c['tasks_per_s']:.0f} tasks/s, "
            f"compile {c['compile_s']:.1f} s apart (second order runs its written-out pass back eagerly)")
    if not args.quick and not args.no_ml1m:
        result["ml1m"] = m = bench_ml1m(threads)
        log(f"ml-1m-sized synthetic run ({m['users']} users, {m['ratings']} ratings; maml, batch {m['meta_batch']}, "
            f"{m['inner_steps']} steps, {m['train_steps']} steps + validation): peak RSS {m['peak_rss_mb']:.0f} MB, "
            f"load {m['load_s']:.1f} s, {m['tasks_per_s']:.0f} tasks/s")
    machine["load_after"] = os.getloadavg()[0]
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.out}")
    return 0
