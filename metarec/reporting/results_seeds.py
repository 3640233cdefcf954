"""Per-seed values of a results page (a table, and a JSON beside the page) and `metarec results --check RUN`,
which says whether one run folder agrees with the page's value for its method and seed.

    metarec results --check outputs/2026-12-07/10-00-00                 # the page: docs/results[-ml1m].seeds.json
    metarec results --check RUN --page docs/results-ml1m.md --against RUN2   # + RUN minus RUN2, paired over tasks
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from metarec.config.compose import compose_plain
from metarec.reporting import runs as run_folders
from metarec.reporting.results_sets import PROTOCOLS
from metarec.errors import UserError
from metarec.evaluation.evaluate import paired_difference
from metarec.reporting.runs import headline, lookup, same_config
from metarec.data.states import STATES

# The same run on two machines differs by float summation order (the CPUs' vector widths, the thread
# count): the default MovieLens run gives MAE 0.7419 on one machine and 0.7440 on another. On another
# rating scale the spread stretches with the scale's span over 1-5's (spread()).
SPREAD_MAE = 0.0025
FLOOR_TOLERANCE = 1e-4  # floors are not trained: on the same tasks and data they agree to float precision
METRICS = ("mae", "ndcg@3")
# config keys a run may set otherwise and still be the page's run: where the data lies, the device,
# threads and progress bars (these move the number within SPREAD_MAE)
FREE_KEYS = (("data", "root"), ("data", "cache_dir"), ("device",), ("trainer", "progress"), ("trainer", "tensorboard"),
             ("seed",))
def page_name(variant: str) -> str:
    """A data set's results page under docs/, without .md: results (ml-100k), results-ml1m, results-NAME."""
    return {"ml-100k": "results", "ml-1m": "results-ml1m"}.get(variant, f"results-{variant}")


def spread(config: dict) -> float:
    """The cross-machine spread of a run's MAE: SPREAD_MAE on 1-5, stretched with the span of the rating
    scale its config declares (data.rating_scale; MovieLens and an undeclared scale: 1-5's)."""
    scale = lookup(config, "data", "rating_scale")
    if isinstance(scale, (list, tuple)) and len(scale) == 2:
        return round(SPREAD_MAE * (float(scale[1]) - float(scale[0])) / 4, 6)
    return SPREAD_MAE


def seeds_path(page: Path) -> Path:
    """The JSON of a page's per-seed values: docs/results-ml1m.md -> docs/results-ml1m.seeds.json."""
    return page.with_suffix(".seeds.json") if page.suffix == ".md" else page


def collect(folders: dict[tuple[str, int], Path], presets: dict[str, list[str]], variant: str) -> dict:
    """The page's per-seed values from its run folders ((method, seed) -> folder), as plain JSON data."""
    values: dict[str, dict[str, dict]] = {}
    configs: dict[str, dict] = {}
    fingerprint, spread_mae = None, SPREAD_MAE
    for (method, seed), folder in folders.items():
        run = run_folders.load_run(folder)
        fingerprint, spread_mae = fingerprint or run.data_fingerprint, spread(run.config)
        values.setdefault(method, {})[str(seed)] = {s: _state(run.states[s]) for s in STATES if s in run.states}
        configs.setdefault(method, _without(run.config, FREE_KEYS))
    return {"variant": variant, "spread_mae": spread_mae, "data_fingerprint": fingerprint,
            "presets": {m: presets[m] for m in values}, "configs": configs, "values": values}


def _state(state: dict) -> dict:
    """A state's headline MAE and nDCG@3, its number of tasks and its floors' MAE."""
    floors = {f: v["mae"] for f, v in state.get("floors", {}).items() if "mae" in v}
    return {**{k: headline(state).get(k) for k in METRICS}, "tasks": _tasks(state), "floors": floors}


def _tasks(state: dict) -> int | None:
    per_task = state.get("per_task", {}).get(str(state.get("headline_step")), {})
    return len(per_task["mae"]) if "mae" in per_task else None


def _without(config: dict, keys: tuple[tuple[str, ...], ...]) -> dict:
    out = json.loads(json.dumps(config))
    for path in keys:
        parent = lookup(out, *path[:-1]) if len(path) > 1 else out
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
    return out


def seed_section(doc: dict) -> str:
    """Markdown: one row per method, one column per state, MAE of each split seed in the cell."""
    states = [s for s in STATES if any(s in v for seeds in doc["values"].values() for v in seeds.values())]
    seeds = sorted({int(k) for seeds in doc["values"].values() for k in seeds})
    name = page_name(doc["variant"])
    lines = ["## Per-seed values", "",
             f"MAE of each run (split seed {' / '.join(map(str, seeds))} in each cell), so that one run can be checked "
             f"against this page: `metarec train experiment=PRESET seed=K`, then `metarec results --check RUN_FOLDER` "
             f"(it reads docs/{name}.seeds.json, which holds these values, nDCG@3, each state's floors and each preset's config). "
             f"The same run on another machine differs by float summation order (CPU vector widths, thread counts): "
             f"0.7419 against 0.7440 for the default run on ml-100k, so the check accepts |difference| <= {doc['spread_mae']} MAE"
             + (" (0.0025 on 1-5, stretched with this scale's span). " if doc["spread_mae"] != SPREAD_MAE else ". ") +
             "A difference between two methods or settings is real only when it is beyond that spread and beyond "
             "2 SE of the paired per-task difference on the same tasks (same split seed: the tables above; "
             "`metarec results --check RUN --against RUN2` for two run folders).", "",
             "| method | " + " | ".join(states) + " |", "|---" * (len(states) + 1) + "|"]
    for method, by_seed in doc["values"].items():
        cells = [" / ".join(_fmt(by_seed.get(str(k), {}).get(s, {}).get("mae")) for k in seeds) for s in states]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def publish(page: Path, doc: dict) -> str:
    """Write the page's per-seed JSON beside it; returns the page's per-seed section."""
    seeds_path(page).write_text(json.dumps(doc, indent=1) + "\n")
    return seed_section(doc)


# ---- the check ---------------------------------------------------------------------------------------
def read_page(path: Path) -> dict:
    try:
        doc = json.loads(seeds_path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"no per-seed values at {seeds_path(path)}: give --page PATH, a results page "
                        "(docs/results.md, docs/results-ml1m.md of the metarec repository) or its .seeds.json") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {seeds_path(path)} ({e}): regenerate the page with `make results`") from None
    if not isinstance(doc, dict) or not {"values", "presets", "configs"} <= doc.keys():
        raise UserError(f"{seeds_path(path)} is not a results page's per-seed file: give the .seeds.json that "
                        "`make results` wrote beside the page")
    return doc


def which(run: run_folders.Run, doc: dict) -> tuple[str, str]:
    """(method, seed) of the page that the run's config is, or a UserError saying what differs."""
    if run.seed is None:
        raise UserError(f"{run.path} has no seed in .hydra/config.yaml: is it a run folder of `metarec train`?")
    mine = _without(run.config, FREE_KEYS)
    for method, config in doc["configs"].items():
        if same_config(config, mine):
            return method, run.seed
    experiment = [o for o in run.overrides if o.split("=", 1)[0].lstrip("+") == "experiment"]
    method = next((m for m, p in doc["presets"].items() if experiment and p == experiment), None)
    if method is None:
        raise UserError(f"{run.path} ran {' '.join(run.overrides) or 'the defaults'}, none of this page's presets "
                        f"({', '.join(' '.join(p) for p in doc['presets'].values())}): train one of them")
    differ = _differences(mine, doc["configs"][method])
    raise UserError(f"{run.path} is {' '.join(experiment)} with other settings ({', '.join(differ[:5])}): its number "
                    "is not the page's; train the preset as it is (only data.root, device.* and seed may differ)")


def _differences(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}={a} (page: {b})"]


def check(run_dir: Path, doc: dict) -> tuple[list[str], bool]:
    """Lines comparing one run folder with the page's value of its method and seed; True when every
    state's MAE is within the spread (and the floors, hence the tasks, are the page's)."""
    run = run_folders.load_run(run_dir)
    if run.status != "finished":
        raise UserError(f"{run_dir} is {run.status}{f' ({run.reason})' if run.reason else ''}: check a finished run")
    method, seed = which(run, doc)
    page = doc["values"][method].get(seed)
    if page is None:
        raise UserError(f"the page has no seed {seed} of {method} (seeds {', '.join(doc['values'][method])}): "
                        "train one of those seeds")
    lines, ok = [f"{run_dir}: {method}, split seed {seed}, against the page ({doc['variant']})"], True
    if doc.get("data_fingerprint") and run.data_fingerprint not in (None, doc["data_fingerprint"]):
        lines.append("  the run read another copy of the data than the page (run_info.json's data_fingerprint "
                     f"{run.data_fingerprint[:12]} against {doc['data_fingerprint'][:12]}): not comparable")
        ok = False
    for state, want in page.items():
        if state not in run.states:
            lines.append(f"  {state}: not in the run's eval.json")
            ok = False
            continue
        got = headline(run.states[state])
        d = got["mae"] - want["mae"]
        agrees = abs(d) <= doc["spread_mae"]
        floor = _floor_gap(run.states[state], want.get("floors", {}))
        same_tasks = floor is None or floor <= FLOOR_TOLERANCE
        ok = ok and agrees and same_tasks
        lines.append(f"  {state}: MAE {got['mae']:.4f}, page {want['mae']:.4f}, difference {d:+.4f}: "
                     + ("within" if agrees else "BEYOND") + f" the cross-machine spread {doc['spread_mae']}"
                     + (f"; nDCG@3 {got['ndcg@3']:.4f}, page {want['ndcg@3']:.4f}" if want.get("ndcg@3") is not None else "")
                     + ("" if same_tasks else f"; its floors differ from the page's by up to {floor:.4f}: other tasks or data"))
    lines.append("agrees with the page" if ok else "DOES NOT agree with the page")
    return lines, ok


def _floor_gap(state: dict, page_floors: dict) -> float | None:
    common = [f for f in page_floors if "mae" in state.get("floors", {}).get(f, {})]
    return max((abs(state["floors"][f]["mae"] - page_floors[f]) for f in common), default=None)


def against(run_dir: Path, other_dir: Path) -> list[str]:
    """RUN minus RUN2 per state, paired over identical tasks (mean and SE of the per-task MAE differences)."""
    a, b = run_folders.load_run(run_dir), run_folders.load_run(other_dir)
    lines = [f"{run_dir} minus {other_dir}, paired over identical tasks (MAE):"]
    for state in (s for s in STATES if s in a.states and s in b.states):
        va, vb = (r.states[state]["per_task"][str(r.states[state]["headline_step"])]["mae"] for r in (a, b))
        if len(va) != len(vb):
            lines.append(f"  {state}: {len(va)} against {len(vb)} tasks: not the same tasks (another split seed?)")
            continue
        d, se = paired_difference(va, vb)
        real = abs(d) > max(2 * se, spread(a.config))
        z = f"{d / se:+.1f}" if se > 0 else "inf"
        lines.append(f"  {state}: {d:+.4f} ± {se:.4f} SE (z {z}) over {len(va)} tasks: "
                     + ("a real difference" if real else "within 2 SE or the cross-machine spread"))
    return lines


def default_page(run_dir: Path) -> Path:
    """The page of the run's data set in this folder's docs/ (the metarec repository's)."""
    config = run_folders.load_run(run_dir).config
    return seeds_path(Path("docs") / f"{page_name(page_of(config))}.md")


def page_of(config: dict) -> str:
    """The results page (its --data name) of a run's data: MovieLens by variant, else the data set whose
    protocol (metarec/reporting/results_sets.py) names the same data and test users; ml-100k if none."""
    if lookup(config, "data", "name") == "movielens":
        return str(lookup(config, "data", "variant"))
    keys = ("dataset", "test_user_field")
    for data, protocol in PROTOCOLS.items():
        want = compose_plain([f"+protocol={protocol}"])["data"]
        if all(want.get(k) == lookup(config, "data", k) for k in keys):
            return data
    return "ml-100k"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="metarec results", description="check one run folder against a results page")
    p.add_argument("--check", type=Path, required=True, metavar="RUN", help="a finished run folder of `metarec train`")
    p.add_argument("--page", type=Path, help="the page or its .seeds.json (default: docs/results[-ml1m].seeds.json)")
    p.add_argument("--against", type=Path, metavar="RUN2", help="another run folder: RUN minus RUN2, paired over tasks")
    args = p.parse_args(argv)
    try:
        for folder in (args.check, args.against):
            if folder is not None and not (folder / "eval.json").is_file():
                raise UserError(f"{folder} has no eval.json: give the folder of a finished `metarec train` run")
        lines, ok = check(args.check, read_page(args.page or default_page(args.check)))
        if args.against is not None:
            lines += against(args.check, args.against)
    except UserError as e:
        print(f"metarec results: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0 if ok else 1
