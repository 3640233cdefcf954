"""Every row is what its input class says (DESIGN.md, "Inductive or transductive"): for every algorithm
of the registry, and for the floors, change the other tasks' support ratings of the test states and
check that a task's predictions do not move, bit for bit, where the source records the run as
inductive, and that they do move where it records it as transductive."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from metarec.algos import ALGOS
from metarec.config.compose import compose
from metarec.errors import UserError
from metarec.evaluation.evaluate import eval_steps
from metarec.run.train import build

GENRES = 19  # u.item's genre flags
STATES = ("user_cold", "item_cold", "user_item_cold")  # their support sets never train


def write_ml100k(folder: Path, ratings: np.ndarray) -> None:
    """A small data set in GroupLens ml-100k's format: 160 users, 120 items released 1990-1999
    (1997-1999 new under ml-100k's cut), each user rating 30 old and 16 new items; ratings [n, 3]."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    occupations = ["artist", "doctor", "engineer", "student", "writer"]
    (folder / "u.user").write_text("".join(
        f"{u}|{rng.integers(18, 60)}|{'MF'[u % 2]}|{occupations[u % 5]}|{10000 + 997 * u}\n" for u in range(1, 161)))
    lines = []
    for i in range(1, 121):
        year = 1990 + i % 10
        flags = "|".join("1" if g == i % GENRES or g == (3 * i) % GENRES else "0" for g in range(GENRES))
        lines.append(f"{i}|Film {i} ({year})|01-Jan-{year}||http://example.org/{i}|{flags}\n")
    (folder / "u.item").write_text("".join(lines), encoding="latin-1")
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{880000000 + k}\n" for k, (u, i, r) in enumerate(ratings)))


def synthetic_ratings() -> np.ndarray:
    rng = np.random.default_rng(0)
    items = np.arange(1, 121)
    old, new = items[1990 + items % 10 <= 1996], items[1990 + items % 10 > 1996]
    taste, quality = rng.normal(size=161), rng.normal(size=121)
    rows = []
    for u in range(1, 161):
        for i in np.concatenate([rng.choice(old, 30, replace=False), rng.choice(new, 16, replace=False)]):
            rows.append((u, i, int(np.clip(np.rint(3.5 + taste[u] + quality[i] + rng.normal(0, .7)), 1, 5))))
    return np.array(rows)


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """(the data set, a copy whose ratings differ only on the test states' support sets, task 0's excepted)."""
    base = tmp_path_factory.mktemp("data")
    ratings = synthetic_ratings()
    write_ml100k(base / "a", ratings)
    source = build(config("maml", base / "a"), torch.device("cpu"), progress=False)[0]
    assert np.array_equal(source.raw.rating, ratings[:, 2])  # rating index = line of u.data
    changed = ratings.copy()
    for state in STATES:
        t = source.tasks[state]
        assert len(t.users) > 3, state
        rows = t.support[1:][t.support_mask[1:].bool()].numpy()  # every task's support but task 0's
        changed[rows, 2] = changed[rows, 2] % 5 + 1  # each of those ratings moves by one star
    write_ml100k(base / "b", changed)
    return base / "a", base / "b"


def config(algo: str, root: Path, *extra: str):
    """`metarec train algo=ALGO data=movielens` on `root`, small, with what the algorithm needs of the
    model and the data (its data_needs / model_needs, as a user would be told to add)."""
    overrides = [f"algo={algo}", "data=movielens", f"data.root={root}", "data.split=[0.5,0.2,0.3]", "seed=0",
                 "model.embedding_dim=4", "device=cpu", "device.threads=1", *extra]
    for fix in ([], ["data.item_ids=true"], [f"model={algo}"]):
        try:
            return compose(overrides + fix)
        except UserError:
            continue
    return compose(overrides)  # the refusal, for the failure message


def predictions(algo_name: str, root: Path, extra: tuple[str, ...]) -> tuple[dict, dict, dict]:
    """Per test state: the first task's query predictions after evaluation's adaptation, the floors' on
    it, and the input class the source recorded for the state; after a few meta-training steps."""
    short = ["algo.pretrain_steps=3"] if "pretrain_steps" in ALGO_KEYS[algo_name] else []  # the networks' phase too
    cfg = config(algo_name, root, *short, *extra)
    source, _, algo = build(cfg, torch.device("cpu"), progress=False)
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        algo.step(source.sample_train(8, generator))
    preds, floors, classes = {}, {}, {}
    batches = source.eval_tasks("test")
    for state in STATES:
        algo.enter_state(state)
        with torch.no_grad():
            pred = algo.adapt_trace(batches[state], eval_steps(cfg), at=[eval_steps(cfg)])[-1]
        preds[state] = pred[0].detach().clone()
        floors[state] = {n: p[0].clone() for n, p in source.floors(state).items()}
        classes[state] = source.input_class(state)
    return preds, floors, classes


ALGO_KEYS = {name: {f.name for f in dataclasses.fields(cls.Config)} for name, cls in ALGOS.items()}
# Runs that ask for other tasks' support sets: each must be recorded transductive, and move.
TRANSDUCTIVE_RUNS = {"maml": ("data.item_stats_transductive=true",), "ridge": ("data.transductive=true",),
                     "metaemb": ("algo.warm_up=true",)}
FAST = {("maml", ()), ("maml", TRANSDUCTIVE_RUNS["maml"])}  # the default protocol and its transductive key
# each case trains two runs (about a minute on a loaded 2-core machine): all but FAST are marked slow
CASES = [pytest.param(name, extra, marks=() if (name, extra) in FAST else pytest.mark.slow,
                      id=f"{name}{'+' + '+'.join(extra) if extra else ''}")
         for name, extra in [(name, ()) for name in ALGOS] + list(TRANSDUCTIVE_RUNS.items())]


@pytest.mark.parametrize("name,extra", CASES)
def test_a_rows_predictions_move_with_other_tasks_support_sets_only_where_it_is_transductive(copies, name, extra):
    a_preds, a_floors, a_classes = predictions(name, copies[0], extra)
    b_preds, b_floors, b_classes = predictions(name, copies[1], extra)
    assert a_classes == b_classes
    moved = {state: not torch.equal(a_preds[state], b_preds[state]) for state in STATES}
    for state in STATES:
        if a_classes[state] == "inductive":
            assert not moved[state], f"{name} {extra} is recorded inductive on {state} but its predictions moved"
    transductive = [s for s in STATES if a_classes[s] == "transductive"]
    if transductive:  # a state without new items may show it nothing it reads (user_cold for the item learners)
        assert any(moved[s] for s in transductive), f"{name} {extra} is recorded transductive but nothing moved"
    if extra:
        assert transductive, f"{name} {extra} reads other support sets: not recorded"


@pytest.mark.slow
def test_the_floors_declare_their_class_and_only_the_transductive_ones_move(copies):
    _, a_floors, _ = predictions("maml", copies[0], ())
    _, b_floors, _ = predictions("maml", copies[1], ())
    source = build(config("maml", copies[0]), torch.device("cpu"), progress=False)[0]
    classes = source.floor_classes()
    assert {n for n, c in classes.items() if c == "transductive"} == {"bias_transductive", "mf_transductive"}
    for state in STATES:
        for name in a_floors[state]:
            moved = not torch.equal(a_floors[state][name], b_floors[state][name])
            assert moved == (classes[name] == "transductive"), (state, name)
