"""`metarec recommend`: the top-k items for a new user, from a trained checkpoint and a few ratings.

    metarec recommend checkpoint=PATH ratings=FILE [top_k=10] [--json]
                      [gender=F age=25 occupation=4 zip=55455 | --user FIELD=VALUE ...] [data.root=PATH] [device=cpu] [threads=N]

FILE is a CSV (or, when its header holds a tab, TSV) file with a header naming an item column
(item_id, item, movie_id or item_id:token) and a rating column (rating or rating:float); other
columns are ignored. Item ids are the data set's own (MovieLens movie ids, an atomic data set's id
tokens). The user's features go on the command line: MovieLens' as key=value (gender M/F, age in
years, occupation as in the data's user table, zip code), any data set's by the field name of its user
file as `--user location=314` (or user.location=314); one not given takes the most common value among
the meta-train users. Predicted ratings are clipped to the data set's rating scale.
The work is metarec/serve/api.py's: adapt with the checkpoint's algorithm, rank every unrated item.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from metarec import inputs
from metarec.errors import UserError

USER_KEYS = ("gender", "age", "occupation", "zip")
KEYS = ("checkpoint", "ratings", "top_k", "data.root", "device", "threads", *USER_KEYS)
ITEM_COLUMNS = ("item_id", "item", "movie_id", "movieid", "itemid")
USAGE = ("usage: metarec recommend checkpoint=PATH ratings=FILE [top_k=10] [--json] "
         "[gender=F age=25 occupation=4 zip=55455 | --user FIELD=VALUE ...] [data.root=PATH] [device=cpu] [threads=N]")


def parse(argv: list[str]) -> tuple[dict[str, str], bool]:
    """key=value arguments and the --json flag; an unknown key or a missing required one is one line."""
    opts, as_json, user = {}, False, {}
    args = iter(argv)
    for a in args:
        if a == "--json":
            as_json = True
            continue
        if a == "--user":  # --user NAME=VALUE: a field of the data's user file by name
            a = "user." + next(args, "")
        key, eq, value = a.partition("=")
        if eq and key.startswith("user.") and len(key) > 5:
            user[key[5:]] = value
            continue
        if not eq or key not in KEYS:
            raise UserError(f"{a!r} is not an argument of metarec recommend (keys: {', '.join(KEYS)}, --json); {USAGE}")
        opts[key] = value
    for key in ("checkpoint", "ratings"):
        if not opts.get(key):
            raise UserError(f"metarec recommend needs {key}=...; {USAGE}")
    opts["user"] = {**{k: opts.pop(k) for k in USER_KEYS if k in opts}, **user}
    return opts, as_json


def read_ratings(path: str | Path):
    """A ratings file -> [api.Rating]; an empty file, a bad header or a malformed line is one line naming it."""
    from metarec.serve.api import Rating

    path = Path(path)
    text = inputs.read_text(path, "ratings file", "pass ratings=FILE, a CSV with a header item_id,rating",
                            limit=inputs.RATINGS_MAX)  # a FIFO or /dev/zero is refused before it is opened
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    if not lines:
        raise UserError(f"{path} is empty: write a header item_id,rating and one line per rated item")
    head_no, head = lines[0]
    sep = "\t" if "\t" in head else ","
    names = [h.strip().lower().split(":")[0] for h in head.split(sep)]
    item_col = next((names.index(c) for c in ITEM_COLUMNS if c in names), None)
    if item_col is None or "rating" not in names:
        raise UserError(f"{path} line {head_no}: the header {head.strip()!r} names no "
                        f"{'item column (item_id)' if item_col is None else 'rating column'}: "
                        f"the first line must be a header such as item_id,rating")
    rating_col = names.index("rating")
    out = []
    for n, line in lines[1:]:
        fields = [f.strip() for f in line.split(sep)]
        where = f"{path} line {n}"
        if len(fields) != len(names):
            raise UserError(f"{where}: {len(fields)} fields where the header has {len(names)} "
                            f"({', '.join(names)}): {line.strip()[:60]!r}")
        try:
            value = float(fields[rating_col])
        except ValueError:
            raise UserError(f"{where}: rating {fields[rating_col]!r} is not a number") from None
        if not fields[item_col]:
            raise UserError(f"{where}: the item id is empty")
        out.append(Rating(fields[item_col], value, where))
    if not out:
        raise UserError(f"{path} has a header but no ratings: add one line per rated item (item_id{sep}rating)")
    return out


def count(key: str, value: str) -> int:
    """A count given as key=value, at least 1: a negative one or zero is called so, as is one that is not a number."""
    try:
        n = int(value.strip())
    except ValueError:
        raise UserError(f"{key}={value!r} is not a whole number: give one >= 1") from None
    if n < 0:
        raise UserError(f"{key}={n} is negative: give a whole number >= 1")
    if n == 0:
        raise UserError(f"{key}=0 is zero: give a whole number >= 1")
    return n


def table(top, rated: int, candidates: int, rec, seconds: dict) -> str:
    lines = [f"top {len(top)} of {candidates:,} unrated items for a new user with {rated} rating(s) "
             f"({rec.cfg.algo.name} adapted for {rec.steps} step(s); checkpoint {rec.path})", "",
             f"{'rank':>4}  {'item_id':>8}  {'predicted':>9}  title"]
    lines += [f"{i:>4}  {r.item_id!s:>8}  {r.predicted_rating:>9.3f}  {r.title}" for i, r in enumerate(top, start=1)]
    lines += ["", f"adapt + rank: {seconds['adapt_rank']:.3f} s (load: {seconds['load']:.1f} s)"]
    return "\n".join(lines)


def recommend(opts: dict[str, str], as_json: bool) -> str:
    import torch

    from metarec.serve.api import load

    if "threads" in opts:
        torch.set_num_threads(count("threads", opts["threads"]))
    top_k = count("top_k", opts.get("top_k", "10"))
    ratings = read_ratings(opts["ratings"])  # before the (slower) load: a bad file fails at once
    start = time.perf_counter()
    rec = load(opts["checkpoint"], data_root=opts.get("data.root"), device=opts.get("device", "cpu"))
    loaded = time.perf_counter()
    user = rec.adapt(ratings, opts["user"])
    top = user.recommend(top_k)
    seconds = {"load": round(loaded - start, 3), "adapt_rank": round(time.perf_counter() - loaded, 4)}
    candidates = int(rec.catalogue.sum()) - int(rec.catalogue[torch.as_tensor(user.rated)].sum())
    if not as_json:
        return table(top, len(ratings), candidates, rec, seconds)
    return json.dumps({"checkpoint": str(rec.path), "algo": rec.cfg.algo.name, "steps": rec.steps,
                       "rated": len(ratings), "candidates": candidates,
                       "user": opts["user"],
                       "top": [{"rank": i, "item_id": r.item_id, "title": r.title, "predicted_rating": r.predicted_rating}
                               for i, r in enumerate(top, start=1)], "seconds": seconds}, indent=2)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n", 1)[1] if argv else USAGE)
        return 0 if argv else 2
    try:
        print(recommend(*parse(argv)))
    except UserError as e:
        print(f"metarec: error: {e}", file=sys.stderr)
        return 2
    return 0
