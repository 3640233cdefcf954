"""Published numbers beside our runs of the same model on the same data: the results page's
"As published" section. Each entry names its source; the page shows our mean over split seeds, the
difference and the best inductive floor of the state, so a reader sees whether the claim holds here."""
from __future__ import annotations

# variant -> method -> (source, {state: published MAE})
PUBLISHED = {
    "ml-1m": {
        "melu_paper": ("MeLU-5, Lee et al., KDD 2019, MovieLens-1M MAE (the state order as docs/tuning.md "
                       "transcribes it: user_cold = 0.7854)",
                       {"warm": 0.7567, "user_cold": 0.7854, "item_cold": 0.9275, "user_item_cold": 0.9235}),
    },
}
INDUCTIVE_FLOORS = ("floor: bias", "floor: mf_foldin")


def published_lines(summary: dict, variant: str, pm) -> list[str]:
    """The page's section: per published method and state, the paper's MAE, ours (mean ± 95% CI over
    seeds), ours minus the paper's, and the best inductive floor of the state on our runs."""
    lines: list[str] = []
    for method, (source, maes) in PUBLISHED.get(variant, {}).items():
        states = [s for s in maes if s in summary["table"] and method in summary["table"][s]]
        if not states:
            continue
        lines += [f"## {method} as published", "", f"Published: {source}. Ours: the same model and inputs on our "
                  "split of the same data (docs/models.md says where they differ). A negative difference is ours "
                  "below (better than) the paper's.", "",
                  "| state | published MAE | ours | ours - published | best inductive floor |", "|---|---|---|---|---|"]
        for state in states:
            rows = summary["table"][state]
            ours = rows[method]["mae"]
            floors = [(rows[f]["mae"][0], f) for f in INDUCTIVE_FLOORS if f in rows]
            floor = min(floors) if floors else None
            floor_cell = f"{floor[1][len('floor: '):]} {floor[0]:.4f}" if floor else "-"
            lines.append(f"| {state} | {maes[state]:.4f} | {pm(ours)} | {ours[0] - maes[state]:+.4f} | {floor_cell} |")
        lines.append("")
    return lines
