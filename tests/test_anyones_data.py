"""Anyone's data (issue #30): the default cut puts a stated share of the ratings on new items, the latest
rating of a pair counts, small states warn, everything in rating units follows the scale, and a
checkpoint of an atomic data set recommends with its own item ids and user fields by name."""
import json
import logging

import numpy as np
import pytest
import torch
from conftest import run_cli
from test_atomic import SHOP, source, write_synthetic

from metarec.data.cold_cut import latest_ratings, random_items, share_threshold, warn_small
from metarec.data.item_context import BIAS_EDGES, bias_edges
from metarec.errors import UserError
from metarec.evaluation.evaluate import on_five, rating_metrics
from metarec.tasks import TaskBatch

DEFAULT_CUT = [o for o in SHOP if not o.startswith("data.cut.")]  # SHOP with no cut given


# ----------------------------------------------------------------------------- the default cut

def test_share_threshold_picks_the_cut_closest_to_the_share():
    values = np.array([1.0, 2.0, 2.0, 3.0, np.nan])  # items 1 and 2 share a value: they are new together
    rating_items = np.array([0] * 4 + [1] * 3 + [2] * 1 + [3] * 2 + [4] * 10)  # 20 ratings
    # above 3: 0; above 2: item 3's 2 ratings (0.1); above 1: items 1-3 (0.3); the nan item never counts
    assert share_threshold(values, rating_items, 0.12) == (2.0, 0.1)
    assert share_threshold(values, rating_items, 0.25) == (1.0, 0.3)
    assert share_threshold(values, rating_items, 0.01) == (3.0, 0.0)


def test_random_items_hold_the_share_of_ratings_closest_to_it():
    rating_items = np.repeat(np.arange(50), np.arange(1, 51))  # item i has i + 1 ratings
    new = random_items(rating_items, 50, 0.3, seed=4)
    order = np.random.default_rng([4, 19]).permutation(50)
    held = np.cumsum(np.arange(1, 51)[order]) / len(rating_items)
    k = int(np.argmin(np.abs(held - 0.3))) + 1  # the oracle: the seeded order's prefix nearest 0.3
    assert set(np.flatnonzero(new)) == set(order[:k].tolist())
    assert abs(np.isin(rating_items, np.flatnonzero(new)).mean() - 0.3) < 50 / len(rating_items)


def test_the_default_cut_on_the_time_field_puts_the_share_on_new_items(tmp_path):
    src = source(*DEFAULT_CUT, f"data.root={write_synthetic(tmp_path)}")
    first = np.full(src.raw.num_items, np.inf)
    np.minimum.at(first, src.raw.rating_item, src.raw.timestamp.astype(float))
    shares = {t: (first[src.raw.rating_item] > t).mean() for t in np.unique(first)}  # every cut the data allows
    best = min(shares, key=lambda t: abs(shares[t] - 0.3))
    info = src.info()
    assert np.array_equal(src.new_item, first > best) and abs(info["new_item_ratings"] - 0.3) < 0.02
    assert info["cut"]["above"] == best and "0.3 of the ratings" in info["cut"]["how"]
    assert info["cut"]["field"].startswith("ts")
    other = source(*DEFAULT_CUT, f"data.root={tmp_path}", "data.cut.new_ratings=0.5")
    assert abs(other.info()["new_item_ratings"] - 0.5) < 0.02


def test_without_a_time_field_the_default_cut_draws_items(tmp_path):
    folder = write_synthetic(tmp_path)
    src = source(*DEFAULT_CUT, f"data.root={folder}", "data.time_field=none", "data.split_seed=2")
    info = src.info()
    assert "random_items" in info["cut"] and "no time field" in info["cut"]["random_items"]
    assert abs(info["new_item_ratings"] - 0.3) < 0.02
    again = source(*DEFAULT_CUT, f"data.root={folder}", "data.time_field=none", "data.split_seed=2")
    assert np.array_equal(src.new_item, again.new_item)
    with pytest.raises(UserError, match="no time field"):
        source(*DEFAULT_CUT, f"data.root={folder}", "data.time_field=none", "data.cut.quantile=0.8")


# ----------------------------------------------------------------------------- duplicates

def test_latest_ratings_keep_the_latest_in_time_else_the_last_line():
    user = np.array([0, 0, 1, 0, 1])
    item = np.array([5, 5, 2, 5, 3])
    stamps = np.array([30.0, 10.0, 1.0, 20.0, 2.0])  # pair (0, 5): lines 0, 1, 3; latest in time: line 0
    assert latest_ratings(user, item, stamps, 6).tolist() == [0, 2, 4]
    assert latest_ratings(user, item, None, 6).tolist() == [2, 3, 4]  # no time: the last line
    tie = np.array([20.0, 10.0, 1.0, 20.0, 2.0])  # a tie in time: the later line
    assert latest_ratings(user, item, tie, 6).tolist() == [2, 3, 4]


def test_a_pair_rated_twice_keeps_its_latest_rating_and_info_counts_it(tmp_path):
    folder = write_synthetic(tmp_path)
    lines = (folder / "shop.inter").read_text().splitlines()
    u, i, _, t = lines[1].split("\t")
    with open(folder / "shop.inter", "a") as f:  # the same pair again, later in the file but earlier in time
        f.write(f"{u}\t{i}\t1\t{int(t) - 1}\n")
    src = source(*SHOP, f"data.root={folder}")
    kept = src.raw.rating[(src.raw.rating_user == 0) & (src.raw.rating_item == src.raw.rating_item[0])]
    assert kept.tolist() == [float(lines[1].split("\t")[2])]
    assert src.info()["duplicate_ratings_dropped"] == 1 and src.info()["duplicates_kept"] == "the latest in time"


# ----------------------------------------------------------------------------- small states

def test_a_state_under_the_minimum_warns_in_one_line_naming_the_setting(caplog):
    with caplog.at_level(logging.WARNING):
        lines = warn_small({"warm": 40, "val_new": 2, "user_cold": 29}, minimum=30)
    assert len(lines) == 2 and [r.getMessage() for r in caplog.records] == lines
    assert lines[0].startswith("val_new has 2 tasks, fewer than 30") and "data.cut.new_ratings" in lines[0]
    assert lines[1].startswith("user_cold has 29 tasks") and "data.split" in lines[1]
    assert all("\n" not in line for line in lines)


def test_data_info_lists_the_warnings(tmp_path):
    src = source(*SHOP, f"data.root={write_synthetic(tmp_path)}")  # 90 users: val has 9 tasks
    counts = {s: len(t.users) for s, t in src.tasks.items()}
    assert src.info().get("warnings", []) == [w for w in src.small_states]
    assert {w.split(" ")[0] for w in src.small_states} == {s for s, n in counts.items() if n < 30}


# ----------------------------------------------------------------------------- the scale

def test_the_catalogues_liked_rating_follows_the_scale():
    """A query item is relevant at the place 4 has on 1-5: 7.5 on 0-10 (8, 9, 10 liked), 7.75 on 1-10."""
    from metarec.tasks import liked_rating
    assert [liked_rating(s) for s in ((1.0, 5.0), (0.0, 10.0), (1.0, 10.0), (0.5, 5.0))] == [4.0, 7.5, 7.75, 3.875]


def test_the_item_context_edges_and_the_gain_follow_the_scale():
    assert np.allclose(bias_edges((1.0, 5.0)), BIAS_EDGES)
    assert np.allclose(bias_edges((0.0, 10.0)), np.arange(-3.75, 3.76, 0.375))
    r = torch.tensor([0.0, 5.0, 10.0])
    assert torch.equal(on_five(r, (0.0, 10.0)), torch.tensor([1.0, 3.0, 5.0]))
    assert torch.equal(on_five(torch.tensor([1.0, 4.0]), (1.0, 5.0)), torch.tensor([1.0, 4.0]))


def test_ndcg_on_a_0_10_scale_is_ndcg_of_the_ratings_on_1_5():
    y = torch.tensor([[10.0, 6.0, 2.0, 0.0]])
    pred = torch.tensor([[1.0, 4.0, 3.0, 2.0]])  # ranks 6, 2, 0, 10
    batch = TaskBatch(y[..., None], y, torch.ones_like(y), y[..., None], y, torch.ones_like(y))
    got = rating_metrics(pred, batch, "exp", 0, (0.0, 10.0))["ndcg@3"]
    gain = 2 ** torch.tensor([3.4, 1.8, 1.0, 5.0]) - 1  # ratings 6, 2, 0, 10 on 1-5, in ranked order
    discount = 1 / torch.log2(torch.arange(3) + 2.0)
    ideal = (2 ** torch.tensor([5.0, 3.4, 1.8]) - 1) * discount
    assert torch.allclose(got, ((gain[:3] * discount).sum() / ideal.sum()).reshape(1))
    # predictions are scored as given: one above the scale counts its whole error
    assert torch.allclose(rating_metrics(torch.full_like(y, 12.0), batch, "exp", 0, (0.0, 10.0))["mae"],
                          torch.tensor([(2 + 6 + 10 + 12) / 4]))


def test_mf_penalties_stretch_with_the_scale(tmp_path):
    folder = write_synthetic(tmp_path)
    five = source(*SHOP, f"data.root={folder}")
    wide = source(*SHOP, f"data.root={folder}", "data.rating_scale=[-5,15]")  # span 20: five times 1-5's
    assert five.mf_settings.reg == 10.0 and wide.mf_settings.reg == 50.0
    assert wide.mf_settings.foldin_reg == 5 * five.mf_settings.foldin_reg


# ----------------------------------------------------------------------------- a new user by field name

def test_user_codes_by_field_name(tmp_path):
    src = source(*SHOP, f"data.root={write_synthetic(tmp_path)}")
    region = [row.split("\t")[1] for row in (tmp_path / "shop.user").read_text().splitlines()[1:]]
    spend = np.array([float(row.split("\t")[2]) for row in (tmp_path / "shop.user").read_text().splitlines()[1:]])
    codes = src.user_codes({"region": "south", "spend": "480"})
    assert codes[0] == sorted(set(region)).index("south") + 1
    edges = np.quantile(spend, [0.25, 0.5, 0.75])  # data.float_buckets=4: training's quantile edges
    assert codes[1] == 1 + int((edges <= 480).sum())
    for bad, message in (({"region": "west"}, "region='west' is not in"), ({"age": "3"}, "'age' is not one the model"),
                         ({"spend": "lots"}, "spend='lots' is not a number")):
        with pytest.raises(UserError, match=message):
            src.user_codes(bad)


def test_test_user_field_makes_the_flagged_users_the_test_users(tmp_path):
    folder = write_synthetic(tmp_path)
    rows = (folder / "shop.user").read_text().splitlines()
    flagged = {f"c{u}" for u in range(0, 90, 4)}
    (folder / "shop.user").write_text("\n".join([rows[0] + "\tnew:float"] + [
        r + ("\t1" if r.split("\t")[0] in flagged else "\t0") for r in rows[1:]]) + "\n")
    src = source(*SHOP, f"data.root={folder}", "data.test_user_field=new", "data.split=[0.6,0.2,0.2]")
    ids = [r.split("\t")[0] for r in rows[1:]]  # user rows: shop.user's order
    assert {ids[u] for u in np.flatnonzero(src.user_role == 2)} == flagged
    rest = np.flatnonzero(src.user_role != 2)
    assert (src.user_role[rest] == 0).sum() == round(0.75 * len(rest))


@pytest.mark.slow
def test_recommend_from_an_atomic_checkpoint_with_user_fields_by_name(tmp_path):
    folder, run = write_synthetic(tmp_path / "shop"), tmp_path / "run"
    r = run_cli("train", *SHOP, f"data.root={folder}", "algo=ridge", "data.item_stats=false", "trainer.max_steps=4",
                "trainer.val_every=2", "trainer.meta_batch_size=8", "trainer.progress=false", "device=cpu",
                "device.threads=1", "eval.max_steps=1", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-2000:]
    data_line = next(line for line in (run / "eval.md").read_text().splitlines() if line.startswith("Data:"))
    assert data_line.startswith("Data: ratings on 1-5; predictions scored as the model gives them, never clipped")
    assert "cut={'field': 'ts', 'above':" in data_line and "duplicate_ratings_dropped=0" in data_line
    (tmp_path / "mine.csv").write_text("item_id,rating\np3,5\np7,1\np11,4\n")
    r = run_cli("recommend", f"checkpoint={run}/checkpoints/best.pt", f"ratings={tmp_path}/mine.csv", "top_k=5",
                "--json", "--user", "region=north", "user.spend=120")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["user"] == {"region": "north", "spend": "120"} and len(out["top"]) == 5
    assert all(t["item_id"].startswith("p") and t["item_id"] not in ("p3", "p7", "p11") for t in out["top"])
    assert all(1 <= t["predicted_rating"] <= 5 for t in out["top"])
    bad = run_cli("recommend", f"checkpoint={run}/checkpoints/best.pt", f"ratings={tmp_path}/mine.csv",
                  "--user", "region=west")
    errors = [line for line in bad.stderr.splitlines() if line.startswith("metarec: error:")]
    assert bad.returncode == 2 and len(errors) == 1 and "region='west' is not in" in errors[0]


# ----------------------------------------------------------------------------- the results pages beyond MovieLens

def test_a_results_page_refuses_a_state_under_30_tasks():
    from metarec.reporting.results_page import SeedRun, summarize

    def run(method, seed, n):
        mae = [0.8] * n
        doc = {"n_tasks": n, "headline_step": "1", "steps": {"1": {"mae": 0.8, "ndcg@3": 0.9, "ndcg_lin@3": 0.9}},
               "per_task": {"1": {"mae": mae, "ndcg@3": [0.9] * n}},
               "floors": {"bias": {"mae": 0.9, "ndcg@3": 0.8, "ndcg_lin@3": 0.8}, "random": {"ndcg@3": 0.7}},
               "floors_per_task": {"bias": {"mae": [0.9] * n, "ndcg@3": [0.8] * n}, "random": {"ndcg@3": [0.7] * n}}}
        return SeedRun(method, seed, {"user_cold": doc}, 0.8)

    assert summarize([run("maml", 0, 30), run("maml", 1, 31)])["states"] == ["user_cold"]
    with pytest.raises(UserError, match=r"fewer than 30 tasks: user_cold \(29 tasks, seed 1\)"):
        summarize([run("maml", 0, 30), run("maml", 1, 29)])


def carried_over(data: str, protocol: str, methods: list[str]) -> None:
    """Each method's run on `data` composes the protocol with its ml-100k preset's settings, key for key."""
    from metarec.reporting import results, results_sets
    from metarec.config.compose import compose_plain
    presets = results.presets_of(data)
    assert list(presets) == [m for m in results.METHODS if m not in results_sets.not_applicable(data, results.METHODS)]
    for method in methods:
        overrides = presets[method]
        ours, theirs = compose_plain(overrides), compose_plain(results.METHODS[method])
        assert overrides[0] == f"+protocol={protocol}" and ours["data"]["name"] == "atomic"
        assert ours["algo"] == theirs["algo"], method  # the method's settings, key for key
        assert ours["model"] == theirs["model"], method
        for key in ("item_ids", "item_stats", "item_factors", "factor_reg", "transductive", "trans_rank", "trans_shares"):
            assert ours["data"][key] == theirs["data"][key], (method, key)
        for key in ("max_steps", "meta_batch_size", "val_every", "patience"):
            assert ours["trainer"][key] == theirs["trainer"][key], (method, key)
    line = results.protocol(list(presets), data)  # every method shares the protocol's users and tasks
    assert ("metahin_new_user" in line) == (data == "dbook-metahin")
    args = results.parse(["--data", data])
    assert str(args.doc) == f"docs/results-{data}.md" and str(args.out) == f"outputs/results-{data}"


def test_a_method_runs_on_a_new_data_set_with_its_ml100k_settings():
    carried_over("movietweetings", "movietweetings", ["ridge_trans", "lwa"])  # data, trainer, algo keys; lwa's item ids


def test_a_data_set_without_user_fields_skips_the_methods_that_read_them_and_the_page_says_so():
    from metarec.reporting import results, results_sets
    skipped = results_sets.not_applicable("movietweetings", results.METHODS)
    assert sorted(skipped) == ["lwa_items", "mamo", "mwuf", "nlba_items"]  # MovieTweetings has no user file
    assert results_sets.not_applicable("dbook", results.METHODS) == {}  # DBook's users have a location
    line = results_sets.skipped_line("movietweetings", results.METHODS)
    assert line.startswith("Not run here: mwuf, mamo, lwa_items, nlba_items; each reads user fields")


@pytest.mark.slow
def test_every_ml100k_method_runs_on_metahins_split_with_its_ml100k_settings():
    from metarec.reporting import results
    carried_over("dbook-metahin", "dbook_metahin", list(results.METHODS))


def test_the_transductive_penalty_stretches_with_the_scale(tmp_path, monkeypatch):
    from metarec.data import transductive
    seen = []
    monkeypatch.setattr(transductive, "side_table", lambda src, settings, seed: seen.append(settings.reg) or (None, None))
    folder = write_synthetic(tmp_path)
    for scale in ("[1,5]", "[0,10]"):
        source(*SHOP, f"data.root={folder}", f"data.rating_scale={scale}", "data.transductive=true", "data.item_stats=false")
    assert seen == [10.0, 25.0]


def test_shown_ratings_are_clipped_to_the_scale_and_ranked_by_the_scores():
    from types import SimpleNamespace

    from metarec.serve.api import AdaptedUser
    rec = SimpleNamespace(scale=(0.0, 10.0), item_ids=["a", "b", "c", "d"], titles=["", "", "", ""],
                          catalogue=torch.ones(4, dtype=torch.bool), _row={"a": 0, "b": 1, "c": 2, "d": 3})
    rec.item_row = lambda item, where: rec._row[item]
    user = AdaptedUser(rec, np.array([3]), torch.tensor([11.0, 12.5, -0.5, 4.0]))
    assert user.predict(["a", "b", "c", "d"]) == [10.0, 10.0, 0.0, 4.0]
    assert [(r.item_id, r.predicted_rating) for r in user.recommend(3)] == [("b", 10.0), ("a", 10.0), ("c", 0.0)]


def test_recommend_takes_user_fields_by_name():
    from metarec.serve.recommend import parse
    opts, as_json = parse(["checkpoint=c.pt", "ratings=r.csv", "--user", "location=314", "user.age=30", "gender=F", "--json"])
    assert opts["user"] == {"gender": "F", "location": "314", "age": "30"} and as_json
    with pytest.raises(UserError, match="not an argument"):
        parse(["checkpoint=c.pt", "ratings=r.csv", "location=314"])
