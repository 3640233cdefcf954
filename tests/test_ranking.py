"""eval.ranking=catalog and the support-size buckets (metarec/evaluation/ranking.py, metarec/data/catalog.py):
metrics by hand on a tiny ranking, the vectorised metrics against a per-user loop, buckets by hand, and
the catalogue of real ml-100k against the evaluation's own tasks."""
import math

import pytest
import torch
from conftest import ML100K, needs_ml100k
from fixtures import check_nodes

from metarec.evaluation import ranking
from metarec.errors import UserError


def test_metrics_equal_a_hand_computed_ranking():
    # 6 items, scores give the order 2, 0, 4, 5, 1 (item 3 is the best score but in support: not a candidate).
    score = torch.tensor([[0.9, 0.1, 1.0, 5.0, 0.5, 0.3]])
    candidate = torch.tensor([[True, True, True, False, True, True]])
    relevant = torch.tensor([[True, False, False, False, False, True]])  # items 0 (rank 2) and 5 (rank 4)
    m = ranking.rank_metrics(score, candidate, relevant, torch.Generator().manual_seed(0), ks=(1, 2, 3, 5))
    d = [1 / math.log2(r + 1) for r in range(1, 6)]  # discount of ranks 1..5
    assert m["recall@1"].item() == 0 and m["hr@1"].item() == 0 and m["ndcg@1"].item() == 0
    assert m["recall@2"].item() == pytest.approx(0.5) and m["hr@2"].item() == 1
    assert m["ndcg@2"].item() == pytest.approx(d[1] / (d[0] + d[1]))
    assert m["recall@3"].item() == pytest.approx(0.5)
    assert m["ndcg@3"].item() == pytest.approx(d[1] / (d[0] + d[1]))
    assert m["recall@5"].item() == pytest.approx(1.0)
    assert m["ndcg@5"].item() == pytest.approx((d[1] + d[3]) / (d[0] + d[1]))
    # one relevant item: the ideal DCG is a single 1 whatever k
    m = ranking.rank_metrics(score, candidate, torch.tensor([[False] * 5 + [True]]), torch.Generator(), ks=(5,))
    assert m["ndcg@5"].item() == pytest.approx(d[3])
    # no relevant item: nan, left out of every mean
    m = ranking.rank_metrics(score, candidate, torch.zeros_like(candidate), torch.Generator(), ks=(5,))
    assert math.isnan(m["recall@5"].item())


def per_user(score, candidate, relevant, ks):
    """The plain reference: each user's candidates sorted by score, metrics by their definitions."""
    out = {f"{n}@{k}": [] for k in ks for n in ("recall", "ndcg", "hr")}
    for s, c, r in zip(score.tolist(), candidate.tolist(), relevant.tolist()):
        order = sorted((i for i in range(len(s)) if c[i]), key=lambda i: -s[i])
        rel = {i for i in range(len(s)) if r[i] and c[i]}
        for k in ks:
            hits = [1.0 if i in rel else 0.0 for i in order[:k]]
            if not rel:
                for n in ("recall", "ndcg", "hr"):
                    out[f"{n}@{k}"].append(math.nan)
                continue
            dcg = sum(h / math.log2(j + 2) for j, h in enumerate(hits))
            idcg = sum(1 / math.log2(j + 2) for j in range(min(k, len(rel))))
            out[f"recall@{k}"].append(sum(hits) / len(rel))
            out[f"ndcg@{k}"].append(dcg / idcg)
            out[f"hr@{k}"].append(float(sum(hits) > 0))
    return out


def test_vectorised_metrics_equal_a_per_user_loop():
    g = torch.Generator().manual_seed(3)
    score = torch.randn(40, 60, generator=g)  # distinct scores: no ties to break
    candidate = torch.rand(40, 60, generator=g) < 0.8
    relevant = torch.rand(40, 60, generator=g) < 0.1
    relevant[0] = False  # a user without a relevant item
    got = ranking.rank_metrics(score, candidate, relevant, torch.Generator().manual_seed(0))
    want = per_user(score, candidate, relevant, ranking.KS)
    for name, values in want.items():
        assert torch.allclose(got[name].double(), torch.tensor(values, dtype=torch.float64), equal_nan=True), name


def test_ties_break_at_random_not_by_item_order():
    # a constant score: the relevant item (the last one) must not always rank last
    n = 50
    relevant = torch.zeros(200, n, dtype=torch.bool)
    relevant[:, -1] = True
    m = ranking.rank_metrics(torch.zeros(200, n), torch.ones(200, n, dtype=torch.bool), relevant,
                             torch.Generator().manual_seed(0), ks=(10,))
    assert 0.1 < m["hr@10"].mean().item() < 0.3  # the random level is 10/50


def test_buckets_by_hand():
    assert ranking.bucket_labels() == ["1-2", "3-5", "6-10", "11-20", "21-50", "51+"]
    sizes = torch.tensor([1, 2, 3, 5, 6, 10, 11, 20, 21, 50, 51, 90])
    assert ranking.bucket_of(sizes).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    rows = ranking.by_support(torch.tensor([3, 4, 12, 60, 5]), {"mae": torch.tensor([1.0, 2.0, 3.0, 4.0, math.nan])},
                              {"bias": {"mae": torch.tensor([0.5, 0.5, 1.0, 2.0, 4.0])}})
    assert [(r["support"], r["n_tasks"]) for r in rows] == [("3-5", 3), ("11-20", 1), ("51+", 1)]
    assert rows[0]["method"]["mae"] == pytest.approx(1.5)  # the nan task counts in no mean
    assert rows[0]["floors"]["bias"]["mae"] == pytest.approx(5 / 3)
    assert rows[2]["method"]["mae"] == 4.0


@pytest.fixture(scope="module")
def ml100k():
    from metarec.config.compose import compose
    from metarec.run.train import build

    if not (ML100K / "u.data").exists():
        pytest.skip("../shared/data/ml-100k is absent")
    cfg = compose(["data=movielens", f"data.root={ML100K}", "algo=ridge", "device=cpu", "eval.ranking=catalog",
                   "data.item_factors=2", "data.heavy_users=true"])
    return (cfg, *build(cfg, torch.device("cpu"), progress=False))


@needs_ml100k()
@pytest.mark.parametrize("state", ["warm", "user_cold", "item_cold", "user_item_cold", "val", "val_new"])
def test_catalogue_rows_candidates_and_relevance_match_the_evaluation_tasks(ml100k, state):
    cfg, source, model, algo = ml100k
    batch = source.eval_tasks("val" if state.startswith("val") else "test")[state]
    cat, t = source.catalog(state), source.tasks[state]
    is_new = torch.from_numpy(source.raw.item_year > source.cut)[cat.items]
    assert is_new.all() if state in ("item_cold", "user_item_cold", "val_new") else not is_new.any()
    pos = torch.full((source.raw.num_items,), -1)
    pos[cat.items] = torch.arange(len(cat.items))
    q_items, s_items = source.rating_item[t.query], source.rating_item[t.support]
    qm, sm = t.query_mask.bool(), t.support_mask.bool()
    x = source.catalog_rows(state, slice(0, None), cat.items)
    rows = x.gather(1, pos[q_items].clamp(min=0)[..., None].expand(-1, -1, x.shape[-1]))
    assert torch.equal(rows[qm], batch.query_x[qm])  # a query item's row is the evaluation's own row
    for i in range(0, len(t.users), 17):
        cand = set(cat.items[cat.candidate[i]].tolist())
        assert cand == set(cat.items.tolist()) - set(s_items[i][sm[i]].tolist())  # the pool less the support
        liked = {int(it) for it, y, m in zip(q_items[i], source.y[t.query[i]], qm[i]) if m and y >= 4}
        assert set(cat.items[cat.relevant[i]].tolist()) == liked


@needs_ml100k()
def test_catalog_state_in_chunks_equals_one_pass(ml100k, monkeypatch):
    cfg, source, model, algo = ml100k
    batch = source.eval_tasks("test")["user_item_cold"]
    whole = ranking.catalog_state(source, algo, batch, "user_item_cold", 1, seed=0)
    monkeypatch.setattr(ranking, "ROWS_PER_CHUNK", 10 * len(source.catalog("user_item_cold").items))  # 10 tasks a chunk
    chunked = ranking.catalog_state(source, algo, batch, "user_item_cold", 1, seed=0)
    # float32 sums over another batch shape may swap two near-equal scores: equal up to such a swap
    assert whole["method"] == pytest.approx(chunked["method"], rel=1e-3)
    assert whole["n_tasks"] == int((source.catalog("user_item_cold").relevant.any(1)).sum())
    assert sum(b["n_tasks"] for b in whole["by_support"]) == batch.n_tasks


@needs_ml100k()
@pytest.mark.slow
def test_catalog_and_buckets_land_in_eval_json_and_eval_md(ml100k):
    from metarec.evaluation.evaluate import evaluate_all, format_table

    cfg, source, model, algo = ml100k
    result = evaluate_all(cfg, source, algo, "val")
    for state in ("val", "val_new"):
        r = result["states"][state]
        assert set(r["catalog"]["floors"]) == {"popularity", "popularity_transductive", "bias", "bias_transductive"}
        assert {f"{m}@{k}" for m in ("recall", "ndcg", "hr") for k in (5, 10, 20)} <= set(r["catalog"]["method"])
        assert sum(b["n_tasks"] for b in r["by_support"]) == r["n_tasks"]
        assert {"mae", "ndcg@3"} <= set(r["by_support"][0]["method"]) and "bias" in r["by_support"][0]["floors"]
    text = format_table(result)
    assert "## Catalogue ranking" in text and "## By support size" in text


def test_bad_ranking_choice_is_one_line():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from metarec.config.schema import EvalConfig
    with pytest.raises(UserError, match="eval.ranking='all' is not one of query, catalog"):  # its rule, beside the field
        check_nodes(eval=OmegaConf.structured(EvalConfig(ranking="all")))
    with pytest.raises(UserError, match="data=sinusoid has none"):
        ranking.catalog_wanted(OmegaConf.create({"eval": {"ranking": "catalog"}, "data": {"name": "sinusoid"}}),
                               SimpleNamespace(kind="regression"))


def test_catalog_section_of_the_results_page_by_hand(tmp_path):
    import json

    from metarec.reporting import catalog_page
    def states(r, pop):
        cat = {"method": {"recall@10": r, "ndcg@10": r / 2}, "floors": {"popularity": {"recall@10": pop, "ndcg@10": pop}},
               "by_support": [{"support": "3-5", "n_tasks": 2, "method": {"recall@10": r}}]}
        return {"states": {"user_cold": {"catalog": cat}}}

    for seed, (r, pop) in enumerate([(0.1, 0.3), (0.3, 0.3)]):
        folder = tmp_path / "ridge" / f"seed{seed}" / "catalog"
        folder.mkdir(parents=True)
        (folder / "eval.json").write_text(json.dumps(states(r, pop)))
    text = catalog_page.from_folders(lambda m, k: tmp_path / m / f"seed{k}", ["ridge", "maml"], [0, 1, 2])
    # t(1 df) = 12.706, stdev(0.1, 0.3) = 0.1 * sqrt(2), over sqrt(2) seeds: 1.2706 (NDCG: half of it)
    assert "| ridge | 0.2000 ± 1.2706 | 0.1000 ± 0.6353 |" in text
    assert "| floor: popularity | 0.3000 ± 0.0000 | 0.3000 ± 0.0000 |" in text
    assert "| 3-5 | 0.2000 |" in text and "maml" not in text  # a method without catalogue numbers is left out
    assert catalog_page.from_folders(lambda m, k: tmp_path / "none", ["ridge"], [0]) == ""
