"""`metarec bench --scale`: how time and peak memory grow with the ratings, phase by phase, on synthetic
RecBole atomic data sets with planted low-rank structure (metarec bench --scale --sizes 0.1M 1M --out scale.json).

Each size runs in a fresh process: read, split and tasks, factors (data.item_factors' cross-fitted ALS),
floors (every state's, computed into an empty floor cache), one training step (model, algorithm and one
meta-update of the default algorithm) and the evaluation (every test state, floors read from that cache).
A phase's peak memory is the process's resident high-water mark during that phase alone (Linux: reset
through /proc/self/clear_refs before it; elsewhere the process's peak so far, which can only be larger).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

PHASES = ("read", "split_tasks", "factors", "floors", "train_step", "evaluation")
RATINGS_PER_USER = 30  # users and items grow with the ratings: about 30 ratings per user ...
RATINGS_PER_ITEM = 20  # ... and 20 per item
RANK = 4  # the planted structure's rank


def write_planted(folder: Path, ratings: int, seed: int = 0) -> dict:
    """An atomic data set (scale.inter / .user / .item) of about `ratings` ratings 1-5: mu + b_u + b_i +
    p_u . q_i + noise, rounded; each user rates about 30 items (popularity-skewed, no repeats); user features
    (gender from p_u, age) and item features (genre from q_i, release_year); an item's ratings come after
    its release, so the default cut (each item's first rating time) makes the latest items new."""
    rng = np.random.default_rng(seed)
    n_users, n_items = max(ratings // RATINGS_PER_USER, 50), max(ratings // RATINGS_PER_ITEM, 50)
    counts = rng.integers(16, 60, n_users)  # draws: about a fifth repeat a pair and are dropped, leaving ~30 per user
    popularity = rng.pareto(1.2, n_items) + 1
    user = np.repeat(np.arange(n_users), counts)
    item = rng.choice(n_items, size=len(user), p=popularity / popularity.sum())
    _, first = np.unique(user * n_items + item, return_index=True)  # a pair drawn twice is rated once
    user, item = user[np.sort(first)], item[np.sort(first)]
    p, q = (rng.normal(0, 0.5, (n, RANK)) for n in (n_users, n_items))
    score = 3.5 + rng.normal(0, 0.3, n_users)[user] + rng.normal(0, 0.3, n_items)[item] + (p[user] * q[item]).sum(1)
    stars = np.clip(np.round(score + rng.normal(0, 0.5, len(user))), 1, 5).astype(np.int64)
    release = rng.integers(0, 10 * 365, n_items) * 86_400 + 1_000_000_000
    stamp = release[item] + rng.integers(0, 365 * 86_400, len(user))
    _write(folder / "scale.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float",
           (user, item, stars, stamp), "{}\t{}\t{}\t{}")
    gender = np.where(p[:, 0] > 0, "M", "F")
    _write(folder / "scale.user", "user_id:token\tage:token\tgender:token",
           (np.arange(n_users), rng.integers(1, 8, n_users), gender), "{}\t{}\t{}")
    genre = np.array([f"g{k}" for k in range(2 * RANK)])[np.argmax(np.concatenate([q, -q], 1), 1)]
    _write(folder / "scale.item", "item_id:token\trelease_year:float\tgenre:token_seq",
           (np.arange(n_items), 2000 + (release - 1_000_000_000) // (365 * 86_400), genre), "{}\t{}\t{}")
    return {"ratings": int(len(user)), "users": int(n_users), "items": int(n_items)}


def _write(path: Path, header: str, columns: tuple, line: str, chunk: int = 1 << 18) -> None:
    with open(path, "w") as f:
        f.write(header + "\n")
        for a in range(0, len(columns[0]), chunk):
            rows = zip(*(c[a:a + chunk].tolist() for c in columns))
            f.write("".join(line.format(*r) + "\n" for r in rows))


# ---- one size, in its own process ---------------------------------------------------------------------------

def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: the high-water mark back to the current RSS
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Phases:
    """Times each phase and records its peak RSS."""

    def __init__(self):
        self.out: dict[str, dict] = {}

    def run(self, name: str, job, minus: float = 0.0):
        _reset_peak()
        t0 = time.perf_counter()
        result = job()
        self.out[name] = {"seconds": round(time.perf_counter() - t0 - minus, 3), "peak_rss_mb": round(_peak_mb(), 1)}
        print(f"  {name}: {self.out[name]['seconds']:.2f} s, peak {self.out[name]['peak_rss_mb']:.0f} MB", flush=True)
        return result


def child(folder: str, factor_rank: int) -> None:
    """Run every phase on the data set in `folder`; print the phases as one JSON line."""
    import torch

    from metarec.config.compose import compose
    from metarec.data.atomic import AtomicTasks, read_dataset
    from metarec.evaluation.evaluate import evaluate_all
    from metarec.run.train import build_model
    from metarec.algos import ALGOS
    cfg = compose(["data=atomic", f"data.root={folder}", "data.user_features=[age,gender]",
                   "data.item_features=[genre,release_year]", "device=cpu", "trainer.progress=false"])
    ph = Phases()
    ph.run("read", lambda: read_dataset(cfg.data))
    read_s = ph.out["read"]["seconds"]
    source = ph.run("split_tasks", lambda: AtomicTasks(cfg.data, "cpu", cfg.seed, progress=False), minus=read_s)
    ph.run("factors", lambda: _factors(source, factor_rank))
    ph.run("floors", lambda: [source.floors(s) for s in source.tasks if len(source.tasks[s].users)])

    def train_step():
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, cfg.algo, source.model_spec())
        algo = ALGOS[cfg.algo.name](cfg.algo, model, source.kind, compile=False, fast_paths=cfg.trainer.fast_paths)
        algo.attach(source)
        algo.step(source.sample_train(cfg.trainer.meta_batch_size, torch.Generator().manual_seed(0)))
        return algo

    algo = ph.run("train_step", train_step)
    ph.run("evaluation", lambda: evaluate_all(cfg, source, algo, "test"))
    print(json.dumps(ph.out))


def _factors(source, rank: int):
    """data.item_factors' cross-fitted item factors on the training ratings (as movielens._item_factors fits them)."""
    import torch

    from metarec.data.factors import cross_fitted
    raw, folds = source.raw, source.cfg.factor_folds
    fold = np.full(raw.num_users, folds, dtype=np.int64)
    fold[source.pool_users] = np.random.default_rng([0, 7]).permutation(len(source.pool_users)) % folds
    tr = source.train_ratings
    return cross_fitted(torch.from_numpy(raw.rating_user[tr]), torch.from_numpy(raw.rating_item[tr]),
                        torch.from_numpy(raw.rating[tr].astype(np.float64)), raw.num_users, raw.num_items, source.mu,
                        torch.from_numpy(fold), folds, rank, source.cfg.factor_reg)


# ---- the sizes, the table --------------------------------------------------------------------------------

def parse_size(text: str) -> int:
    """0.1M, 1M, 10M, 250k or a plain number of ratings."""
    t = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    try:
        n = int(float(t[:-1] if scale > 1 else t) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: write e.g. 0.1M, 1M, 250k") from None
    if n < 1000:
        raise argparse.ArgumentTypeError(f"{text!r}: use at least 1k ratings")
    return n


def run_size(ratings: int, threads: int, factor_rank: int, timeout: int) -> dict:
    """One size in a fresh process (its own peak memory), on a data set written to a temp folder."""
    with tempfile.TemporaryDirectory(prefix="metarec-scale-") as tmp:
        shape = write_planted(Path(tmp), ratings)
        print(f"{shape['ratings']:,} ratings, {shape['users']:,} users, {shape['items']:,} items", flush=True)
        code = (f"import torch; torch.set_num_threads({threads}); from metarec.bench.scale import child; "
                f"child({tmp!r}, {factor_rank})")
        env = {**os.environ, "METAREC_FLOOR_CACHE": str(Path(tmp) / "floors")}  # empty: the floors are computed
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
        print(done.stdout.rsplit("\n", 2)[0], flush=True)
        if done.returncode != 0:
            raise RuntimeError(f"the {ratings:,}-rating run failed:\n{done.stderr[-2000:]}")
        return {**shape, "phases": json.loads(done.stdout.strip().splitlines()[-1])}


def per_doubling(a: dict, b: dict, phase: str) -> float:
    """How many times a phase's time grows when the ratings double, between sizes a and b (log-log slope)."""
    t_a, t_b = a["phases"][phase]["seconds"], b["phases"][phase]["seconds"]
    if t_a <= 0 or t_b <= 0:
        return float("nan")
    return 2 ** (np.log(t_b / t_a) / np.log(b["ratings"] / a["ratings"]))


def table(result: dict) -> str:
    """Markdown: a row per size (seconds and peak MB per phase), then per phase the growth per doubling."""
    sizes = result["sizes"]
    head = "| ratings | users | items | " + " | ".join(f"{p} s / MB" for p in PHASES) + " |"
    lines = [head, "|---" * (3 + len(PHASES)) + "|"]
    for s in sizes:
        cells = [f"{s['phases'][p]['seconds']:.2f} / {s['phases'][p]['peak_rss_mb']:.0f}" for p in PHASES]
        lines.append(f"| {s['ratings']:,} | {s['users']:,} | {s['items']:,} | " + " | ".join(cells) + " |")
    for a, b in zip(sizes, sizes[1:]):
        cells = [f"{per_doubling(a, b, p):.2f}x" for p in PHASES]
        lines.append(f"| time per doubling, {a['ratings']:,} -> {b['ratings']:,} | | | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="metarec bench --scale", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[100_000, 1_000_000, 10_000_000],
                        help="ratings per data set (default 0.1M 1M 10M)")
    parser.add_argument("--out", help="write the JSON result here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run (default 1)")
    parser.add_argument("--factor-rank", type=int, default=10, help="rank of the factors phase's ALS")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one size may take")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    result = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip()
                         + f", {os.cpu_count()} cores, {args.threads} thread(s), load average {load:.1f} at start",
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "sizes": []}
    print(f"metarec bench --scale: {result['machine']} (other work on the machine slows every phase)", flush=True)
    for n in sorted(args.sizes):
        try:
            result["sizes"].append(run_size(n, args.threads, args.factor_rank, args.timeout))
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"metarec: error: {str(e).splitlines()[0]}", file=sys.stderr)
            print(str(e)[-2000:], file=sys.stderr)
            break
        if args.out:  # what is done so far, should a larger size fail or be stopped
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result), end="")
    return 0 if len(result["sizes"]) == len(args.sizes) else 1
