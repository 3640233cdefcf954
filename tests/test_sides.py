"""The user's and the item's features come from the data, by side, not by MovieLens' field names: the
cold-item learners (metaemb, mwuf, lwa_items, nlba_items), the paper's LWA / NLBA and MAMO read a data
set's own user and item fields, and refuse in one line where the data gives them none."""
from __future__ import annotations

import shutil

import pytest
import torch
from test_atomic import SHOP, source, write_synthetic

from metarec.algos import ALGOS
from metarec.config.compose import compose
from metarec.models.melu import FieldEncoder, legacy_sides
from metarec.run.train import build_model

NEEDS_USERS = ("mwuf", "lwa_items", "nlba_items")  # read the raters' user fields
CONTENT_ONLY = ("metaemb", "lwa", "nlba")  # read the item's content only
DIM = 4


def built(root, algo: str, *extra: str):
    """(source, algorithm) of `algo` on the synthetic shop data, attached as a run attaches it."""
    overrides = [*SHOP, f"data.root={root}", f"algo={algo}", "data.item_ids=true", f"model.embedding_dim={DIM}",
                 "model.hidden=[8,8]", *extra]
    if algo == "mamo":
        overrides.append("model=mamo")
    if algo in NEEDS_USERS + ("metaemb",):
        overrides.append("algo.pretrain_steps=0")  # the networks' phase from the first step
    cfg = compose(overrides)
    src = source(*overrides)
    model = build_model(cfg.model, cfg.algo, src.model_spec())
    algo_obj = ALGOS[cfg.algo.name](cfg.algo, model, src.kind)
    algo_obj.attach(src)
    return src, algo_obj


def test_the_spec_names_each_sides_fields(tmp_path):
    src = source(*SHOP, f"data.root={write_synthetic(tmp_path)}", "data.item_ids=true")
    assert src.model_spec()["sides"] == {"user": ["region", "spend", "interests"], "item": ["price", "tags", "sizes"]}


def test_a_spec_without_sides_reads_movielens_user_fields():
    names = ["gender", "age", "occupation", "zip", "year", "item_bias", "item_count", "item"]
    assert legacy_sides(names, [("genre", 18)]) == {"user": ["gender", "age", "occupation", "zip"],
                                                     "item": ["year", "genre"]}


def test_the_sides_features_are_each_fields_embedding_and_each_blocks_mean(tmp_path):
    """The oracle: a side's features written out field by field (a multi-hot block: the mean of its
    flagged rows of the shared table)."""
    src = source(*SHOP, f"data.root={write_synthetic(tmp_path)}", "data.item_ids=true")
    torch.manual_seed(0)
    enc = FieldEncoder.from_spec(src.model_spec(), DIM)
    x = src.sample_train(3, torch.Generator().manual_seed(0)).support_x.flatten(0, 1)[:9]  # model inputs, context in
    names = enc.field_names
    starts = {name: (start, width) for name, start, width in enc.blocks}
    for side, want in (("user", ["region", "spend", "interests"]), ("item", ["price", "tags", "sizes"])):
        rows = []
        for r in x:
            parts = []
            for name in want:
                if name in starts:
                    start, width = starts[name]
                    flags = r[len(names) + start:len(names) + start + width]
                    on = [enc.multi.weight[start + j] for j in range(width) if flags[j]]
                    parts.append(torch.stack(on).mean(0) if on else torch.zeros(DIM))
                else:
                    parts.append(enc.embeddings[name].weight[r[names.index(name)]])
            rows.append(torch.cat(parts))
        assert enc.side_width(side) == len(want) * DIM
        torch.testing.assert_close(enc.side(x, side), torch.stack(rows))


@pytest.mark.parametrize("algo", ["metaemb", "mwuf", "lwa_items", "nlba_items", "lwa", "nlba", "mamo"])
def test_each_learner_trains_on_the_datas_own_fields(tmp_path, algo):
    src, learner = built(write_synthetic(tmp_path), algo)
    generator = torch.Generator().manual_seed(0)
    before = [p.detach().clone() for p in learner.meta_parameters()]
    for _ in range(2):
        assert torch.isfinite(torch.tensor(learner.step(src.sample_train(4, generator))["loss"]))
    after = learner.meta_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # something learned
    batch = src.eval_tasks("test")["item_cold"]
    pred = learner.adapt_trace(batch, 1, at=[1])[-1]
    assert pred.shape == batch.query_y.shape and torch.isfinite(pred).all()


def without_users(tmp_path):
    root = write_synthetic(tmp_path / "shop")
    (root / "shop.user").unlink()
    return root


@pytest.mark.parametrize("algo", [*NEEDS_USERS, "mamo"])
def test_a_learner_that_reads_user_fields_refuses_data_without_them(tmp_path, algo):
    root = without_users(tmp_path)
    with pytest.raises(Exception, match="the data's user fields|the raters' user fields") as e:
        built(root, algo, "data.user_features=[]")
    assert "it does not apply here" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("algo", CONTENT_ONLY)
def test_a_learner_of_item_content_runs_without_user_fields(tmp_path, algo):
    src, learner = built(without_users(tmp_path), algo, "data.user_features=[]")
    assert src.model_spec()["sides"]["user"] == []
    learner.step(src.sample_train(4, torch.Generator().manual_seed(0)))


def test_the_liked_class_takes_the_datas_scale(tmp_path):
    """algo.like_threshold null: 4 on 1-5, 7.5 on 0-10 (the same place); a set value stays."""
    root = write_synthetic(tmp_path / "a")
    _, five = built(root, "lwa")
    assert five.like == 4.0
    ten = tmp_path / "ten"
    shutil.copytree(root, ten)
    inter = (ten / "shop.inter").read_text().splitlines()
    rows = [line.split("\t") for line in inter[1:]]
    (ten / "shop.inter").write_text("\n".join([inter[0]] + ["\t".join([u, i, str(2 * float(r)), t]) for u, i, r, t in rows]))
    _, ten_algo = built(ten, "lwa_items", "data.rating_scale=[0,10]")
    assert ten_algo.like == 7.5
    _, fixed = built(ten, "lwa_items", "data.rating_scale=[0,10]", "algo.like_threshold=6")
    assert fixed.like == 6.0
