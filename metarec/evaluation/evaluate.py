"""Few-shot evaluation: adapt each task on its support set for 0..N steps, score its query set.

Ratings: MAE, RMSE, nDCG@1/3/5; regression: MSE; classification: accuracy. Each metric is a
mean over tasks with a 95% confidence interval (1.96 standard errors), next to the floors on the
same tasks.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from metarec import progress
from metarec.evaluation import ranking
from metarec.signals import between_chunks
from metarec.tasks import INDUCTIVE, TaskBatch, TaskSource

NDCG_KS = (1, 3, 5)
PAIRED = ("mae", "ndcg@3", "mse", "acc")  # per-task values kept in eval.json for paired comparisons


def ndcg_at_k(score: Tensor, rating: Tensor, mask: Tensor, k: int, gain: str,
              generator: torch.Generator | Tensor) -> Tensor:
    """Per-task nDCG@k of the query items ranked by `score`: [tasks]. Ties are broken at random, by
    `generator`'s draws or by given keys [tasks, Q] (ranking.tie_order), so a constant score scores the
    random-order level, not an artificial order."""
    g = torch.pow(2.0, rating) - 1 if gain == "exp" else rating
    g = g * mask
    tie = generator if isinstance(generator, Tensor) else torch.rand(score.shape, generator=generator)
    tie = tie.to(score.device)
    perm = tie.argsort(dim=1)  # random order first, then a stable sort by score keeps it within ties
    s = score.gather(1, perm).masked_fill(mask.gather(1, perm) == 0, -math.inf)
    order = perm.gather(1, s.argsort(dim=1, descending=True, stable=True))
    discount = 1.0 / torch.log2(torch.arange(score.shape[1], device=score.device, dtype=score.dtype) + 2.0)
    top = min(k, score.shape[1])
    dcg = (g.gather(1, order)[:, :top] * discount[:top]).sum(1)
    idcg = (g.sort(dim=1, descending=True).values[:, :top] * discount[:top]).sum(1)
    return torch.where(idcg > 0, dcg / idcg.clamp(min=1e-12), torch.ones_like(dcg))


def mean_ci(values: Tensor) -> tuple[float, float]:
    """Mean over tasks and the half-width of its 95% confidence interval."""
    values = values.double()
    n = values.numel()
    std = values.std().item() if n > 1 else 0.0
    return values.mean().item(), 1.96 * std / math.sqrt(max(n, 1))


def on_five(rating: Tensor, scale: tuple[float, float] | None) -> Tensor:
    """Ratings mapped onto 1-5 for the nDCG gain (the identity on a 1-5 scale): 2^r - 1 on a 0-10 scale
    would weigh a 10 1,023 times a 1 and a 9 twice as much as an 8."""
    if scale is None:
        return rating
    lo, hi = scale
    return rating if (lo, hi) == (1.0, 5.0) else 1 + 4 * (rating - lo) / (hi - lo)


def rating_metrics(pred: Tensor, batch: TaskBatch, gain: str, seed: int,
                   scale: tuple[float, float] | None = None, first_task: int = 0) -> dict[str, Tensor]:
    """Per-task metrics of query predictions [tasks, Q], scored as predicted (never clipped: every method
    and floor alike); the nDCG gains read the query ratings mapped onto 1-5 (on_five). nDCG's ties break
    by keys drawn per task from (seed + k, first_task + the task's row), so a task scores the same in
    whichever evaluation chunk it falls."""
    y, m = batch.query_y, batch.query_mask
    n = m.sum(1).clamp(min=1)
    err = (pred - y) * m
    out = {"mae": err.abs().sum(1) / n, "rmse": ((err ** 2).sum(1) / n).sqrt()}
    other = {"exp": ("linear", "ndcg_lin"), "linear": ("exp", "ndcg_exp")}[gain]
    r = on_five(y, scale)
    ties = {k: ranking.tie_order(seed + k, first_task, *y.shape) for k in NDCG_KS}
    for k in NDCG_KS:  # both gains, each named: ndcg@k uses eval.ndcg_gain
        out[f"ndcg@{k}"] = ndcg_at_k(pred, r, m, k, gain, ties[k])
    for k in NDCG_KS:
        out[f"{other[1]}@{k}"] = ndcg_at_k(pred, r, m, k, other[0], ties[k])
    return out


def task_metrics(pred: Tensor, batch: TaskBatch, kind: str, gain: str = "exp", seed: int = 0,
                 scale: tuple[float, float] | None = None, first_task: int = 0) -> dict[str, Tensor]:
    if kind == "rating":
        return rating_metrics(pred, batch, gain, seed, scale, first_task)
    m = batch.query_mask
    n = m.sum(1).clamp(min=1)
    if kind == "classification":
        return {"acc": ((pred.argmax(-1) == batch.query_y).float() * m).sum(1) / n}
    return {"mse": (((pred - batch.query_y) ** 2) * m).sum(1) / n}


def summarize(per_task: dict[str, Tensor]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, values in per_task.items():
        mean, ci = mean_ci(values)
        out[name], out[f"{name}_ci"] = mean, ci
    return out


def evaluate_state(algo, batch: TaskBatch, kind: str, steps: int, gain: str, chunk: int, seed: int = 0,
                   floors: dict[str, Tensor] | None = None, only_last: bool = False, headline: int | None = None,
                   scale: tuple[float, float] | None = None) -> dict:
    """Metrics after 0..steps adaptation steps, or only after `steps` with only_last=True (chunks of tasks
    share one batched pass); with `headline`, also each metric at that step per support-size bucket."""
    scored = [steps] if only_last else list(range(steps + 1))
    per_step: dict[int, dict[str, list[Tensor]]] = {k: {} for k in scored}
    bar = progress.Phase(batch.n_tasks, "evaluate", "task", progress.EVAL_HINT, enabled=not only_last)
    for start in range(0, batch.n_tasks, chunk):
        between_chunks()  # a stop request takes effect here, not after the whole evaluation
        part = batch.select(slice(start, start + chunk))
        for k, pred in zip(scored, algo.adapt_trace(part, steps, at=[steps] if only_last else None)):
            for name, v in task_metrics(pred.float(), part, kind, gain, seed, scale, start).items():
                per_step[k].setdefault(name, []).append(v.cpu())
        bar.update(part.n_tasks)
    bar.close()
    per_step_cat = {k: {n: torch.cat(v) for n, v in d.items()} for k, d in per_step.items()}
    result = {"n_tasks": batch.n_tasks, "steps": {str(k): summarize(d) for k, d in per_step_cat.items()},
              "per_task": {str(k): _paired(d) for k, d in per_step_cat.items()}}
    floor_tasks: dict[str, dict[str, Tensor]] = {}
    if floors is not None:
        result["floors"], result["floors_per_task"] = {}, {}
        if kind == "rating":
            floors = {**floors, "random": torch.zeros_like(batch.query_y)}  # all tied: the random-order level
        for name, pred in floors.items():
            per_task = task_metrics(pred.float(), batch, kind, gain, seed, scale)
            if name == "random":
                per_task = {k: v for k, v in per_task.items() if k.startswith("ndcg")}
            result["floors"][name] = summarize(per_task)
            result["floors_per_task"][name] = _paired(per_task)
            floor_tasks[name] = per_task
    if headline is not None:
        result["by_support"] = ranking.by_support(batch.support_mask.sum(1), per_step_cat[headline], floor_tasks)
    return result


def eval_steps(cfg) -> int:
    """The adaptation steps of the headline metric: algo.eval_steps, else algo.inner_steps."""
    return cfg.algo.eval_steps if cfg.algo.eval_steps is not None else cfg.algo.inner_steps


def evaluate_all(cfg, source: TaskSource, algo, split: str, select: bool = False) -> dict:
    """eval.json's content: every state of `split` ("test" or "val"), floors beside the learned model.
    select=True (the trainer's model selection): the "val" state alone (the algorithm's select_state
    if it names one), at the headline step alone."""
    headline = eval_steps(cfg)
    steps = headline if select or algo.one_pass else max(cfg.eval.max_steps, headline)
    catalog = not select and ranking.catalog_wanted(cfg, source)
    states = {}
    for state, batch in source.eval_tasks(split).items():
        if select and state != algo.select_state:
            continue
        floors = None if select else source.floors(state)
        algo.enter_state(state)  # e.g. metaemb's warm-up reads the state's visible ratings
        # validation selects on the headline step alone: no query forward for the steps before it
        r = evaluate_state(algo, batch, source.kind, steps, cfg.eval.ndcg_gain, cfg.eval.chunk, cfg.seed, floors,
                           only_last=select, headline=None if select else headline, scale=source.rating_scale)
        r["headline_step"] = str(headline)
        r["input_class"] = source.input_class(state)  # what this state's predictions read, as the source recorded it
        if floors is not None:
            r["floor_classes"] = {n: source.floor_classes().get(n, INDUCTIVE) for n in r["floors"]}
        if algo.phase() is not None:  # a two-phase learner: which phase the weights come from
            r["checkpoint_phase"] = algo.phase()
        if catalog:
            r["catalog"] = ranking.catalog_state(source, algo, batch, state, headline, cfg.seed)
        if algo.one_pass:
            r["adaptation"] = "one forward pass over the support set, no gradient steps"
        states[state] = r
    result = {"states": states}
    if source.kind == "rating":
        result["gain"] = ("ndcg@k: 2^r-1, ndcg_lin@k: linear (r)" if cfg.eval.ndcg_gain == "exp"
                          else "ndcg@k: linear (r), ndcg_exp@k: 2^r-1")
        result["scoring"] = scoring_line(source)
    return result


def scoring_line(source: TaskSource) -> str:
    """eval.md's line on the data: its scale, how predictions are scored, which items are new."""
    lo, hi = source.rating_scale or (1.0, 5.0)  # a source without a scale: its gains read the ratings as they are
    gain = "r" if (lo, hi) == (1.0, 5.0) else f"r mapped onto 1-5 as 1 + 4 (r - {lo:g}) / {hi - lo:g}"
    cut = ", ".join(f"{k}={v}" for k, v in dict(source.cut_info).items())
    scale = f"{lo:g}-{hi:g}" if source.rating_scale else "their own scale"
    return (f"ratings on {scale}; predictions scored as the model gives them, never clipped (every method and "
            f"floor alike); nDCG gains of {gain}; new items: {cut or 'none'}")


def _paired(per_task: dict[str, Tensor]) -> dict[str, list[float]]:
    return {n: [round(float(v), 6) for v in per_task[n]] for n in PAIRED if n in per_task}


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of a - b over the same tasks and its standard error."""
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    se = d.std().item() / math.sqrt(d.numel()) if d.numel() > 1 else float("nan")
    return d.mean().item(), se


def headline_line(result: dict) -> str | None:
    """One line: the method's headline MAE on user_cold (else the first state with floors) against the
    best floor of that state of the row's own input class, with the paired per-task difference; None where no state has floors."""
    states = result["states"]
    state = next((s for s in ("user_cold", *states) if s in states and states[s].get("floors_per_task")), None)
    if state is None:
        return None
    r = states[state]
    step = r.get("headline_step", "0")
    kind = r.get("input_class")  # a row is compared with the floors of its own input class
    floors = {n: m["mae"] for n, m in r["floors"].items()
              if "mae" in m and (kind is None or r.get("floor_classes", {}).get(n, kind) == kind)}
    if not floors or "mae" not in r["per_task"].get(step, {}):
        return None
    best = min(floors, key=floors.get)
    d, se = paired_difference(r["per_task"][step]["mae"], r["floors_per_task"][best]["mae"])
    z = "" if math.isnan(se) or se == 0 else f" ({d / se:+.1f} SE)"
    when = "after one forward pass" if "adaptation" in r else f"after {step} steps"
    of = f" {kind}" if kind else ""
    return (f"**{state}**: MAE {r['steps'][step]['mae']:.4f} {when} against the best{of} floor, {best} "
            f"{floors[best]:.4f}: paired difference {d:+.4f} ± {se:.4f}{z} over {r['n_tasks']} tasks "
            "(negative: the method is better).")


def format_table(result: dict, title: str = "") -> str:
    """eval.json -> the headline line, then a markdown table per state (metrics per adaptation step, then floors)."""
    lines = [f"# {title}".rstrip(), ""] if title else []
    line = headline_line(result)
    lines += [line, ""] if line else []
    for state, r in result["states"].items():
        steps = r["steps"]
        names = [n for n in steps["0"] if not n.endswith("_ci") and not n.startswith(("ndcg@1", "ndcg_lin@1", "ndcg_exp@1"))]
        when = f"headline: {r['adaptation']}" if "adaptation" in r else f"headline after {r.get('headline_step', '?')} steps"
        read = f", {r['input_class']}" if "input_class" in r else ""
        lines += [f"## {state} ({r['n_tasks']} tasks, {when}{read})", "",
                  "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for k, m in steps.items():
            label = "support set, one pass" if "adaptation" in r else f"{k} steps"
            lines.append(f"| {label} | " + " | ".join(f"{m[n]:.4f} ± {m[n + '_ci']:.4f}" for n in names) + " |")
        for fname, m in r.get("floors", {}).items():
            cells = [f"{m[n]:.4f} ± {m[n + '_ci']:.4f}" if n in m else "" for n in names]
            kind = r.get("floor_classes", {}).get(fname)
            lines.append(f"| floor: {fname}{f' ({kind})' if kind else ''} | " + " | ".join(cells) + " |")
        lines.append("")
    if "gain" in result:
        lines.append(f"nDCG gains: {result['gain']}.")
    if "scoring" in result:
        lines.append(f"Data: {result['scoring']}.")
    return "\n".join(lines) + "\n" + ranking.format_by_support(result) + ranking.format_catalog(result)
