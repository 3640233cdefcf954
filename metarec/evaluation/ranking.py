"""Full-catalogue ranking (eval.ranking=catalog) and every metric per support-size bucket.

Ranking the 10 query items of a user scores high whatever the order (RecBole-MetaRec reported HR@5
near 1.0 that way). Here every task ranks the whole item pool of its state (existing items for warm,
user_cold and val; new items for item_cold, user_item_cold and val_new: the data source's
`catalog(state)`) less the items of its support set; the relevant items are the query items it rated
4 or 5. The candidate set is the same for every user of a state, so it says nothing about which
items a user rated. Recall@k = relevant items in the top k / relevant items, NDCG@k with binary gains
(ideal: every relevant item first), HR@k = 1 if any relevant item is in the top k; k = 5, 10, 20.
A user without a liked query item has no relevant item and is left out of these means. Beside the
method: popularity (training ratings), popularity_transductive (training ratings and every support
set of the state: a new item's only count; it reads other test users' support sets, hence its name),
bias and bias_transductive (the floors' item biases: the ranking their rating predictions make).

Tasks are scored in chunks (tasks x every item) in one batched forward; ties break at random (seeded),
so a constant score ranks at the random level.

Support-size buckets: a new user gave 3 to 90 ratings under MeLU's protocol (13-100 ratings, 10 of
them in the query), so the buckets are 1-2 (data.shots, other protocols), 3-5, 6-10, 11-20, 21-50
and 51+; every per-task metric is averaged per bucket, the method's and each floor's.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from metarec.errors import UserError
from metarec.signals import between_chunks
from metarec.tasks import TaskBatch

KS = (5, 10, 20)
BUCKET_STARTS = (1, 3, 6, 11, 21, 51)  # a bucket runs from its start to the next start - 1
ROWS_PER_CHUNK = 65536  # (task, item) pairs per batched forward: about 100 MB of activations for MeLU


def bucket_labels(starts: tuple[int, ...] = BUCKET_STARTS) -> list[str]:
    ends = [f"-{b - 1}" for b in starts[1:]] + ["+"]
    return [f"{a}{e}" if e == "+" or int(e[1:]) > a else str(a) for a, e in zip(starts, ends)]


def bucket_of(sizes: Tensor, starts: tuple[int, ...] = BUCKET_STARTS) -> Tensor:
    """The bucket index of each support size (sizes below the first start fall in bucket 0)."""
    return (torch.bucketize(sizes.long(), torch.tensor(starts), right=True) - 1).clamp(min=0)


def by_support(sizes: Tensor, method: dict[str, Tensor], floors: dict[str, dict[str, Tensor]] | None = None,
               starts: tuple[int, ...] = BUCKET_STARTS) -> list[dict]:
    """Means of per-task metrics [tasks] per support-size bucket (empty buckets left out; a nan value,
    e.g. a task without a relevant item, counts in no mean)."""
    which = bucket_of(sizes.cpu(), starts)
    out = []
    for b, label in enumerate(bucket_labels(starts)):
        sel = which == b
        if not sel.any():
            continue
        row = {"support": label, "n_tasks": int(sel.sum()), "method": _means(method, sel)}
        if floors:
            row["floors"] = {name: _means(per_task, sel) for name, per_task in floors.items()}
        out.append(row)
    return out


def _means(per_task: dict[str, Tensor], sel: Tensor) -> dict[str, float]:
    out = {}
    for name, v in per_task.items():
        v = v.cpu().double()[sel]
        v = v[~v.isnan()]
        out[name] = round(v.mean().item(), 6) if v.numel() else float("nan")
    return out


@functools.lru_cache(maxsize=64)
def tie_order(seed: int, first_task: int, n_tasks: int, n_items: int) -> Tensor:
    """[tasks, N] random keys that break ties, drawn per task from (seed, the task's index in its state): a
    task's order is the same whichever chunk it is scored in (a new item's floors tie on every new item).
    Kept for the chunk's other calls (each adaptation step and each floor score the same tasks); read only."""
    return torch.stack([torch.rand(n_items, generator=torch.Generator().manual_seed(seed * 1_000_003 + first_task + i))
                        for i in range(n_tasks)])


def rank_metrics(score: Tensor, candidate: Tensor, relevant: Tensor, generator: torch.Generator | Tensor,
                 ks: tuple[int, ...] = KS) -> dict[str, Tensor]:
    """Recall@k, NDCG@k and HR@k per task [tasks] of the ranking of `score` [tasks, N] over the
    candidates [tasks, N] (bool), relevance [tasks, N] (bool); nan for a task without a relevant item.
    Ties break by `generator`'s draws, or by the given keys [tasks, N] (tie_order)."""
    tie = generator if isinstance(generator, Tensor) else torch.rand(score.shape, generator=generator)
    tie = tie.to(score.device)
    perm = tie.argsort(dim=1)  # random order first; a stable sort by score keeps it within ties
    s = score.float().gather(1, perm).masked_fill(~candidate.gather(1, perm), -math.inf)
    top = perm.gather(1, s.argsort(dim=1, descending=True, stable=True)[:, :max(ks)])
    hit = (relevant & candidate).gather(1, top).float()  # [tasks, K]
    n_rel = (relevant & candidate).sum(1).float()
    discount = 1.0 / torch.log2(torch.arange(hit.shape[1], device=hit.device, dtype=hit.dtype) + 2.0)
    out = {}
    for k in ks:
        found = hit[:, :k].sum(1)
        ideal = torch.cumsum(discount, 0)[(n_rel.clamp(max=min(k, hit.shape[1])) - 1).clamp(min=0).long()]
        none = torch.full_like(found, math.nan)
        out[f"recall@{k}"] = torch.where(n_rel > 0, found / n_rel.clamp(min=1), none)
        out[f"ndcg@{k}"] = torch.where(n_rel > 0, (hit[:, :k] * discount[:k]).sum(1) / ideal, none)
        out[f"hr@{k}"] = torch.where(n_rel > 0, (found > 0).float(), none)
    return out


def summarize(per_task: dict[str, Tensor]) -> dict[str, float]:
    """Mean over the tasks with a relevant item and its 95% CI (1.96 standard errors)."""
    out = {}
    for name, v in per_task.items():
        v = v.double()
        v = v[~v.isnan()]
        n = v.numel()
        out[name] = v.mean().item() if n else float("nan")
        out[f"{name}_ci"] = 1.96 * v.std().item() / math.sqrt(n) if n > 1 else 0.0
    return out


def catalog_state(source, algo, batch: TaskBatch, state: str, steps: int, seed: int = 0) -> dict:
    """eval.json's "catalog" entry of one state: the method (adapted on each support set for `steps`
    steps) and the non-learned rankings over the state's catalogue, overall and per support size."""
    cat = source.catalog(state)
    floors = source.catalog_floors(state, cat.items)
    n_items = len(cat.items)
    chunk = max(1, ROWS_PER_CHUNK // max(n_items, 1))
    method: dict[str, list[Tensor]] = {}
    floor_parts: dict[str, dict[str, list[Tensor]]] = {name: {} for name in floors}
    for start in range(0, batch.n_tasks, chunk):
        between_chunks()  # the heartbeat, and a stop request takes effect here
        part, sl = batch.select(slice(start, start + chunk)), slice(start, start + chunk)
        qx = source.catalog_rows(state, sl, cat.items)  # [tasks, N, F]
        ones = torch.ones(qx.shape[:2], dtype=part.query_y.dtype, device=qx.device)
        query = TaskBatch(part.support_x, part.support_y, part.support_mask, qx, ones * 0, ones)
        pred = algo.adapt_trace(query, steps, at=[steps])[-1]
        cand, rel = cat.masks(sl)  # [tasks, N] of this chunk alone
        tie = tie_order(seed, start, len(cand), n_items)  # the same keys for the method and every floor
        for name, v in rank_metrics(pred, cand, rel, tie).items():
            method.setdefault(name, []).append(v.cpu())
        for fname, score in floors.items():
            scores = score[None].expand(len(cand), -1)
            for name, v in rank_metrics(scores, cand, rel, tie).items():
                floor_parts[fname].setdefault(name, []).append(v.cpu())
    method_t = {n: torch.cat(v) for n, v in method.items()}
    floors_t = {f: {n: torch.cat(v) for n, v in d.items()} for f, d in floor_parts.items()}
    n_relevant = int((~method_t[f"recall@{KS[0]}"].isnan()).sum())
    return {"items": cat.pool, "n_items": n_items,
            "n_tasks": n_relevant, "liked": f">= {cat.liked:g}", "steps": steps,
            "method": summarize(method_t), "floors": {f: summarize(d) for f, d in floors_t.items()},
            "by_support": by_support(cat.support_size, method_t, floors_t)}


def format_catalog(result: dict, k: int = 10) -> str:
    """eval.md's catalogue section: per state Recall@k / NDCG@k / HR@k of the method and the floors,
    then the method's and the floors' Recall@k per support-size bucket."""
    states = {s: r["catalog"] for s, r in result["states"].items() if "catalog" in r}
    if not states:
        return ""
    names = [f"recall@{k}", f"ndcg@{k}", f"hr@{k}"]
    lines = ["## Catalogue ranking", "",
             f"Every item of the state's pool that the user did not rate in support, ranked; relevant: the query "
             f"items rated {next(iter(states.values()))['liked']}. Users without one are left out. Mean ± 95% CI at "
             f"k={k} (eval.json has k = "
             f"{', '.join(map(str, KS))}).", ""]
    for state, c in states.items():
        lines += [f"### {state}: {c['n_items']} {c['items']}, {c['n_tasks']} users with a liked query item", "",
                  "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for row, m in [("method", c["method"]), *((f"floor: {f}", m) for f, m in c["floors"].items())]:
            lines.append(f"| {row} | " + " | ".join(f"{m[n]:.4f} ± {m[n + '_ci']:.4f}" for n in names) + " |")
        floors = list(c["floors"])
        lines += ["", f"Recall@{k} by support size:", "", "| support | users | method | " + " | ".join(floors) + " |",
                  "|---" * (len(floors) + 3) + "|"]
        for b in c["by_support"]:
            cells = [b["method"][names[0]]] + [b["floors"][f][names[0]] for f in floors]
            lines.append(f"| {b['support']} | {b['n_tasks']} | " + " | ".join(f"{v:.4f}" for v in cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def format_by_support(result: dict, metrics: tuple[str, ...] = ("mae", "ndcg@3", "mse", "acc")) -> str:
    """eval.md's support-size section: per state and bucket, the method's headline metrics and the floors'."""
    lines = []
    for state, r in result["states"].items():
        rows = r.get("by_support")
        if not rows:
            continue
        names = [n for n in metrics if n in rows[0]["method"]]
        floors = [(f, n) for f, m in rows[0].get("floors", {}).items() for n in names[:1] if n in m]
        if not lines:
            lines += ["## By support size", "", "Each metric's mean over the tasks whose support set has that many "
                      "ratings (the method after the headline step; floors: their first metric).", ""]
        head = names + [f"{f} {n}" for f, n in floors]
        lines += [f"### {state}", "", "| support | tasks | " + " | ".join(head) + " |", "|---" * (len(head) + 2) + "|"]
        for b in rows:
            cells = [b["method"][n] for n in names] + [b["floors"][f][n] for f, n in floors]
            lines.append(f"| {b['support']} | {b['n_tasks']} | " + " | ".join(f"{v:.4f}" for v in cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n" if lines else ""


def catalog_wanted(cfg, source) -> bool:
    """eval.ranking: query (the query items alone) or catalog (also the whole catalogue, where the data has one)."""
    choice = cfg.eval.get("ranking", "query")
    if choice == "catalog" and source.kind != "rating":
        raise UserError(f"eval.ranking=catalog ranks a catalogue of items: data={cfg.data.name} has none "
                        f"(use it with data=movielens)")
    return choice == "catalog"
