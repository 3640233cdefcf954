"""LWA / NLBA on user tasks (the paper's): class means by hand, the vectorised predictions and meta-gradient
equal a plain per-task loop written from the paper's formulas (float64, 1e-10), padding has no effect,
and a short console-script run trains and evaluates with every row recorded inductive."""
import pytest
import torch
from conftest import ML100K, needs_ml100k, read_json, run_cli
from fixtures import rating_batch
from omegaconf import OmegaConf

from metarec.algos.lwa_users import LWA, NLBA, LWAConfig, NLBAConfig, class_means
from metarec.models.melu import MeLU

# MeLU's MovieLens fields: the four user fields, then the item's year; genres as the multi-hot block
SPEC = {"fields": [["gender", 3], ["age", 8], ["occupation", 6], ["zip", 4], ["year", 5]],
        "multi_hot": ["genre", 4], "offset": 3.5}
KINDS = {"lwa": (LWA, LWAConfig), "nlba": (NLBA, NLBAConfig)}


def make(name):
    torch.manual_seed(0)
    model = MeLU(SPEC, embedding_dim=5, hidden=[8, 8]).double()
    cls, config = KINDS[name]
    cfg = OmegaConf.merge(OmegaConf.structured(config), {"content_hidden": 6, "content_dim": 4, "like_threshold": 4.0,
                                                         **({"hidden": [5, 3]} if name == "nlba" else {})})
    return cls(cfg, model, "rating")


def test_class_means_by_hand():
    f = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [9.0, 9.0]]])  # [1 task, 4 items, 2]
    y = torch.tensor([[5.0, 2.0, 4.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last is padding
    r1, r0 = class_means(f, y, mask, 4.0)
    assert torch.equal(r1, torch.tensor([[3.0, 2.0]])) and torch.equal(r0, torch.tensor([[3.0, 2.0]]))
    r1, r0 = class_means(f, torch.tensor([[1.0, 2.0, 3.0, 5.0]]), mask, 4.0)  # no liked item: R1 = 0
    assert torch.equal(r1, torch.zeros(1, 2)) and torch.equal(r0, torch.tensor([[3.0, 2.0]]))
    r1, r0 = class_means(f, y, mask, 4.0, "sum")  # liked: items 0 and 2; other: item 1
    assert torch.equal(r1, torch.tensor([[6.0, 4.0]])) and torch.equal(r0, torch.tensor([[3.0, 2.0]]))
    r1, r0 = class_means(f, y, mask, 4.0, "share")  # the sums over the 3 support items
    assert torch.allclose(r1, torch.tensor([[2.0, 4 / 3]])) and torch.allclose(r0, torch.tensor([[1.0, 2 / 3]]))


def reference_embed(algo, x):
    """F(t) of one item x [F + flags]: the content network over the year's embedding and the genres' mean."""
    enc = algo.model.encoder
    flags = x[5:].double()
    genres = (flags @ enc.multi.weight) / flags.sum().clamp(min=1.0)
    return algo.content(torch.cat([enc.embeddings["year"](x[4]), genres]))


def reference_score(algo, f, r1, r0):
    s = algo.scorer
    if algo.cfg.name == "lwa":  # mu + b + F(t) . (G1 R1 + G0 R0)
        return 3.5 + s["b"].weight[0, 0] + f @ (s["g1"].weight @ r1 + s["g0"].weight @ r0)
    h = f
    for layer, v1, v0 in zip(s["layers"], s["v1"], s["v0"]):  # relu(W h + c + V1 R1 + V0 R0)
        h = torch.relu(layer.weight @ h + layer.bias + v1.weight @ r1 + v0.weight @ r0)
    return 3.5 + s["out"].weight[0] @ h + s["out"].bias[0] + s["out1"].weight[0] @ r1 + s["out0"].weight[0] @ r0


def reference_loss(algo, batch):  # algo.pooling=mean, the paper's
    losses = []
    for i in range(batch.n_tasks):
        liked, other = [], []
        for j in range(batch.support_x.shape[1]):
            if batch.support_mask[i, j]:
                (liked if batch.support_y[i, j] >= 4.0 else other).append(reference_embed(algo, batch.support_x[i, j]))
        zero = torch.zeros(algo.cfg.content_dim, dtype=torch.float64)
        r1 = torch.stack(liked).mean(0) if liked else zero
        r0 = torch.stack(other).mean(0) if other else zero
        errors = [(reference_score(algo, reference_embed(algo, batch.query_x[i, j]), r1, r0) - batch.query_y[i, j]) ** 2
                  for j in range(batch.query_x.shape[1]) if batch.query_mask[i, j]]
        losses.append(torch.stack(errors).mean())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("name", ["lwa", "nlba"])
def test_loss_and_meta_gradient_equal_a_per_task_loop(name):
    algo = make(name)
    batch = rating_batch(n_tasks=5, support=(1, 7), query=(2, 5), seed=3)
    params = algo.meta_parameters()
    ours = algo.meta_loss(batch)
    ref = reference_loss(algo, batch)
    assert torch.allclose(ours, ref, rtol=0, atol=1e-10)
    for g, h in zip(torch.autograd.grad(ours, params, allow_unused=True),
                    torch.autograd.grad(ref, params, allow_unused=True)):
        assert (g is None and h is None) or torch.allclose(g, h, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["lwa", "nlba"])
def test_padding_and_other_tasks_change_nothing(name):
    algo = make(name)
    batch = rating_batch(n_tasks=4, support=(2, 6), seed=1)
    alone = algo.adapt_trace(batch.select(slice(0, 1)), 0)[0]
    together = algo.adapt_trace(batch, 0)[0][:1]
    m = batch.query_mask[:1].bool()
    assert torch.allclose(alone[m], together[m], rtol=0, atol=1e-12)


@pytest.mark.slow
@needs_ml100k()
@pytest.mark.parametrize("name", ["nlba"])  # NLBA builds on LWA's code: one run covers the path
def test_trains_and_evaluates_inductively_through_the_console_script(tmp_path, name):
    run = tmp_path / "run"
    r = run_cli("train", f"algo={name}", "data=movielens", f"data.root={ML100K}", "trainer.max_steps=20",
                "trainer.val_every=10", "trainer.progress=false", "device=cpu", "device.threads=1", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    states = read_json(run / "eval.json")["states"]
    assert {s: states[s]["input_class"] for s in states} == {s: "inductive" for s in states}
    assert states["item_cold"]["floor_classes"]["bias_transductive"] == "transductive"
    cold = states["user_cold"]  # a fixed-seed golden number (one thread, CPU) and a floor a wrong model would miss
    assert cold["headline_step"] == "0" and cold["steps"]["0"]["mae"] == pytest.approx(0.808123, abs=1e-3)
    assert cold["steps"]["0"]["mae"] < cold["floors"]["global_mean"]["mae"] - 0.03  # it reads the user's ratings
