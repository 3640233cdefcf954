"""The results page's tables by input class: per state, the inductive rows against the inductive floors
and the transductive rows against the transductive floors, each with a headline (DESIGN.md, "Inductive
or transductive"). Each row's class is the one its runs' eval.json recorded, never a hand-kept list."""
from __future__ import annotations

import statistics

CLASSES = ("inductive", "transductive")
FLOORS = {"inductive": ("bias", "mf_foldin"), "transductive": ("bias_transductive", "mf_transductive")}
UNRECORDED = "unrecorded"  # a run whose eval.json records no class: it belongs to neither table


def run_class(states_by_seed: dict[int, dict], state: str) -> str:
    """A method's class on `state`: what every seed's eval.json recorded (transductive if any seed read
    other tasks' support sets; unrecorded when a seed did not say)."""
    seen = {states[state].get("input_class", UNRECORDED) for states in states_by_seed.values()}
    if UNRECORDED in seen:
        return UNRECORDED
    return "transductive" if "transductive" in seen else "inductive"


def class_summary(by_method: dict[str, dict[int, dict]], states: list[str], val: dict[str, list[float]],
                  baseline: str, paired) -> dict:
    """state -> class -> {methods, floors, best, best_floor, mae (difference, SE)}; `paired` is
    results_page.paired (a - floor over identical tasks, combined over seeds). The best method of a
    class is the meta-learner (not `baseline`) with the lowest mean validation MAE, never a test number;
    the best floor the one of the class's floors with the lowest test MAE, as a floor has no validation."""
    first = next(iter(by_method.values()))
    out: dict[str, dict[str, dict]] = {}
    for state in states:
        out[state] = {}
        for kind in CLASSES:
            methods = [m for m in by_method if run_class(by_method[m], state) == kind]
            floors = [f for f in FLOORS[kind] if all(f in s[state].get("floors_per_task", {}) for s in first.values())]
            entry: dict = {"methods": methods, "floors": floors}
            meta = [m for m in methods if m != baseline]
            if meta and floors:
                best = min(meta, key=lambda m: statistics.fmean(val[m]))
                floor = min(floors, key=lambda f: statistics.fmean(s[state]["floors"][f]["mae"] for s in first.values()))
                entry.update(best=best, best_floor=floor, mae=paired(by_method[best], None, state, "mae", floor))
            out[state][kind] = entry
    return out


def headline(state: str, kind: str, entry: dict) -> str:
    """Who wins the class's table, by how many SE of the paired difference."""
    if "best" not in entry:
        return f"**{state}, {kind}**: no {kind} meta-learner on this page." if entry["floors"] else \
            f"**{state}, {kind}**: no {kind} floor on this state."
    d, se = entry["mae"]
    z = d / se if se > 0 else float("inf") * (1 if d > 0 else -1 if d < 0 else 0)
    if abs(z) <= 2:
        verdict = "neither wins (within 2 SE)"
    else:
        verdict = f"{entry['best'] if d < 0 else 'the floor ' + entry['best_floor']} wins by {abs(z):.1f} SE"
    return (f"**{state}, {kind}**: {verdict}: {entry['best']} (the {kind} meta-learner best on validation) minus "
            f"{entry['best_floor']} (the best {kind} floor), MAE {d:+.4f} ± {se:.4f}.")


def phases(by_method: dict[str, dict[int, dict]]) -> dict[str, list[str]]:
    """method -> the training phase of each seed's evaluated checkpoint (eval.json's checkpoint_phase),
    for the two-phase learners (base model, then networks: metarec/algos/cold_items.py)."""
    out = {}
    for m, seeds in by_method.items():
        found = [next((st["checkpoint_phase"] for st in states.values() if "checkpoint_phase" in st), None)
                 for _, states in sorted(seeds.items())]
        if any(found):
            out[m] = [p or "not recorded" for p in found]
    return out


def class_lines(summary: dict, mean_ci_cell) -> list[str]:
    """The page's section: per state, one table per class (rows of that class and its floors, MAE and
    nDCG@3), each under its headline. mean_ci_cell formats a (mean, CI) pair."""
    classes = summary.get("classes")
    if not classes:
        return []
    lines = ["## Inductive and transductive rows, each against the floors of its class", "",
             "Inductive: a row read training ratings and the task's own support set only; transductive: it also "
             "read other test users' support sets of the state (never a query), as eval.json recorded for every "
             "run. Each class is compared with its own floors: bias and mf_foldin; bias_transductive and "
             "mf_transductive. The difference is the best meta-learner of the class (by validation MAE) minus the "
             "best floor of the class on identical tasks (per seed the mean over tasks and its SE, combined over "
             "seeds); negative favours the meta-learner.", ""]
    unrecorded = sorted({m for per in classes.values() for m in summary["methods"]
                         if m not in per["inductive"]["methods"] + per["transductive"]["methods"]})
    if summary.get("phases"):
        lines += ["Two-phase rows (a base model, then networks for new items): the phase each seed's evaluated "
                  "checkpoint comes from; selection never keeps a base-phase checkpoint: "
                  + "; ".join(f"{m}: {', '.join(p)}" for m, p in summary["phases"].items()) + ".", ""]
    if unrecorded:
        lines += [f"Not in these tables (their eval.json records no input class: train them again): "
                  f"{', '.join(unrecorded)}.", ""]
    for state, per in classes.items():
        for kind in CLASSES:
            entry = per[kind]
            lines += [f"### {state}: {kind}", "", headline(state, kind, entry), "",
                      "| row | MAE | nDCG@3 (gain 2^r-1) |", "|---|---|---|"]
            for name in entry["methods"] + [f"floor: {f}" for f in entry["floors"]]:
                row = summary["table"][state].get(name, {})
                best = " (best on validation)" if name == entry.get("best") else ""
                lines.append(f"| {name}{best} | {mean_ci_cell(row.get('mae'))} | {mean_ci_cell(row.get('ndcg@3'))} |")
            lines.append("")
    return lines
