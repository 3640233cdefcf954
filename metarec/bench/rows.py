"""`metarec bench`'s rows: one per algorithm of the registry (metarec.algos.ALGOS) on the model and data it
declares, each timed against the per-task reference loop where the package has one and against a plain
supervised step, interleaved in one process (metarec/bench/speed.py runs them and the rest of the bench)."""
from __future__ import annotations

import resource
import statistics
import time
from typing import Callable

import torch
from omegaconf import OmegaConf

from metarec.algos import ALGOS
from metarec.algos.mamo import MAMO
from metarec.algos.maml import MAML
from metarec.algos.pretrain import Pretrain
from metarec.algos.reptile import Reptile
from metarec.algos.tanp import TaNP
from metarec.config.compose import compose
from metarec.errors import UserError

BOTH_ORDERS = ("maml",)  # algorithms the grid runs in second and first order (the rest: their config's order)


def peak_rss_mb() -> float:
    """This process's peak resident set so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_algo(cfg, source, name: str | None = None):
    """Model and algorithm exactly as metarec.run.train.build makes them, on an already loaded source."""
    from metarec.run.train import build_model
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.algo, source.model_spec()).to(source.device)
    algo = ALGOS[name or cfg.algo.name](cfg.algo, model, source.kind, compile=cfg.trainer.compile,
                                        fast_paths=cfg.trainer.fast_paths)
    algo.attach(source)  # item tasks (metaemb, mwuf, lwa, nlba) come from the source
    return algo


def trains_with_steps(cls) -> bool:
    """Whether meta-training takes algo.inner_steps gradient steps per task (the grid varies them)."""
    return (issubclass(cls, MAML) and not issubclass(cls, Pretrain)) or issubclass(cls, MAMO)


def reference_step(algo) -> tuple[Callable | None, str]:
    """One meta-update of the per-task loop that the gradient tests use (+ the algorithm's optimizer),
    or None and why the package has none for this algorithm."""
    from metarec.bench.reference import per_task_meta_loss, per_task_reptile_step
    if isinstance(algo, (MAMO, TaNP)):  # the algorithm's own per-task loop (no inner-loop engine)
        def own(batch):
            algo.optimizer.zero_grad(set_to_none=True)
            algo.reference_loss(batch).backward()
            algo.optimizer.step()
        return own, ""
    if isinstance(algo, Pretrain):  # metaemb, mwuf, lwa, nlba too: phase 2 trains on item tasks
        return None, ("no per-task reference: item tasks, batched" if type(algo) is not Pretrain
                      else "no per-task reference: a supervised step")
    if not isinstance(algo, MAML):
        return None, "no per-task reference in the package"
    cfg, names = algo.cfg, algo.engine.inner_names

    def step(batch):
        algo.optimizer.zero_grad(set_to_none=True)
        if isinstance(algo, Reptile):
            per_task_reptile_step(algo.model, names, batch, algo.kind, cfg.inner_lr, cfg.inner_steps, algo.inner_adam())
        else:
            per_task_meta_loss(algo.model, names, batch, algo.kind, algo.inner_lr(), cfg.inner_steps,
                               cfg.first_order).backward()
        algo.optimizer.step()
    return step, ""


def supervised_step(algo) -> Callable:
    """One plain forward + backward + Adam step over the batch's real ratings (support and query,
    no padding): the floor of any meta-training step on the same data."""
    flat: dict[int, tuple] = {}  # per batch, made once, outside the timed step

    def step(batch):
        if id(batch) not in flat:
            data = batch.merged()
            real = data.support_mask.bool()
            flat[id(batch)] = (data.support_x[real], data.support_y[real])
        x, y = flat[id(batch)]
        algo.optimizer.zero_grad(set_to_none=True)
        loss = ((algo.model(x) - y) ** 2).mean()
        loss.backward()
        algo.optimizer.step()
    return step


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued work (a GPU runs asynchronously: a clock read without it times the launch)."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def time_interleaved(steps: dict[str, Callable], batches: list, repeats: int, min_time: float,
                     sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Seconds per step of each callable: one warm-up step, then `repeats` rounds that time every
    callable in turn (so load from elsewhere hits them alike), each round >= min_time per callable."""
    per_round = {}
    for name, fn in steps.items():
        t0 = time.perf_counter()
        fn(batches[0])  # warm-up
        fn(batches[1 % len(batches)])
        sync()
        per_round[name] = max(1, int(min_time / max((time.perf_counter() - t0) / 2, 1e-6)))
    out: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(repeats):
        for name, fn in steps.items():
            n = per_round[name]
            sync()
            t0 = time.perf_counter()
            for k in range(n):
                fn(batches[(r * n + k) % len(batches)])
            sync()
            out[name].append((time.perf_counter() - t0) / n)
    return out


def grid(names: list[str]) -> list[tuple[str, bool | None]]:
    """(algo, first_order) of each row: the named algorithms in the registry's order, maml in both orders."""
    return [(n, fo) for n in ALGOS if n in names for fo in ((False, True) if n in BOTH_ORDERS else (None,))]


def fitting_overrides(name: str, source) -> list[str]:
    """The overrides that make algorithm `name` fit the bench's data, read from what it declares
    (metarec/config/fit.py): a model offering what it needs, data.item_ids where its data check asks for it."""
    from metarec.models import MODELS
    base = base_overrides(source) + [f"algo={name}"]
    cfg = compose(base, check=False)
    extra = []
    needs = set(ALGOS[name].model_needs(cfg.algo))
    if not needs <= set(MODELS[cfg.model.name].offers):
        extra += [f"model={m}" for m, cls in MODELS.items() if needs <= set(cls.offers)][:1]
    if ALGOS[name].data_needs(cfg.data) is not None:  # (an algorithm's own config may already set it)
        extra.append("data.item_ids=true")  # what data_needs asks for (ColdItemLearner's item ids); compose below checks
    compose(base + extra)  # checked: one UserError line if that was not enough
    return extra


def bench_grid(source, names, batch_sizes, inner_steps, repeats, min_time, log) -> list[dict]:
    from metarec.data import build_source
    rows, sources = [], {OmegaConf.to_yaml(source.cfg): source}
    for algo_name, first_order in grid(names):
        try:
            extra = fitting_overrides(algo_name, source)
        except UserError as e:
            log(f"{algo_name:<8} skipped: {e}")
            rows.append({"algo": algo_name, "impl": "skipped", "note": str(e)})
            continue
        cfg = compose(base_overrides(source) + [f"algo={algo_name}"] + extra)
        key = OmegaConf.to_yaml(cfg.data)
        if key not in sources:  # e.g. item ids (an algorithm's config may set them): another source of the data
            sources[key] = build_source(cfg.data, source.device, cfg.seed, progress=False)
        src = sources[key]
        cls = ALGOS[algo_name]
        for meta_batch in batch_sizes:
            generator = torch.Generator().manual_seed(0)
            batches = [src.sample_train(meta_batch, generator) for _ in range(4)]
            for steps in (inner_steps if trains_with_steps(cls) else [None]):
                new = bench_config(src, algo_name, extra, first_order, meta_batch, steps, batches, repeats, min_time)
                rows += new
                log(format_row(new))
    return rows


def bench_config(source, algo_name: str, extra: list[str], first_order: bool | None, meta_batch: int,
                 steps: int | None, batches: list, repeats: int, min_time: float) -> list[dict]:
    """The rows (reference where there is one, engine, supervised) of one algorithm at one grid point."""
    base = base_overrides(source) + extra
    cfg = compose(base + [f"algo={algo_name}", f"trainer.meta_batch_size={meta_batch}",
                          *([f"algo.inner_steps={steps}"] if steps is not None else []),
                          *([f"algo.first_order={str(first_order).lower()}"] if first_order is not None else []),
                          # item-task learners: phase 2 (phase 1 is pretrain's step), meta_batch item tasks a step
                          *(["algo.pretrain_steps=0", f"algo.items_per_step={meta_batch}"]
                            if "items_per_step" in compose(base + [f"algo={algo_name}"], check=False).algo else [])])
    engine = build_algo(cfg, source)
    # the supervised step on the same model: pretrain's schema (model and data as the algorithm's)
    supervised = build_algo(compose(base + ["algo=pretrain"]), source, "pretrain")
    reference, note = reference_step(build_algo(cfg, source))
    steps_fns = {**({"reference": reference} if reference is not None else {}), "engine": engine.step,
                 "supervised": supervised_step(supervised)}
    times = time_interleaved(steps_fns, batches, repeats, min_time, synchronizer(source.device))
    return [{"algo": algo_name, "meta_batch": meta_batch, "inner_steps": steps,
             "first_order": cfg.algo.get("first_order") if first_order is None else first_order, "impl": impl,
             "tasks_per_s": meta_batch / statistics.median(ts), "peak_rss_mb": peak_rss_mb(),
             **({"note": note} if note else {})} for impl, ts in times.items()]


def base_overrides(source) -> list[str]:
    root = source.cfg.root
    return [f"device={source.device.type}", "trainer.progress=false", *([f"data.root={root}"] if root else [])]


HEADER = (f"{'algo':<8} {'order':<6} {'batch':>5} {'steps':>5} {'reference':>10} {'engine':>9} {'supervised':>10}"
          f" {'eng/ref':>8} {'eng step/sup step':>17}")


def format_row(rows: list[dict]) -> str:
    """One line of the table from a config's rows (tasks/s): reference (where there is one), engine, supervised."""
    by = {r["impl"]: r["tasks_per_s"] for r in rows}
    r = rows[0]
    order = "-" if r.get("first_order") is None else ("first" if r["first_order"] else "second")
    steps = "-" if r["inner_steps"] is None else str(r["inner_steps"])
    ref, ratio = (f"{by['reference']:>10.0f}", f"{by['engine'] / by['reference']:>7.1f}x") if "reference" in by else (
        f"{'-':>10}", f"{'-':>8}")
    note = f"  ({r['note']})" if r.get("note") else ""
    return (f"{r['algo']:<8} {order:<6} {r['meta_batch']:>5} {steps:>5} {ref} {by['engine']:>9.0f} "
            f"{by['supervised']:>10.0f} {ratio} {by['supervised'] / by['engine']:>16.1f}x{note}")
