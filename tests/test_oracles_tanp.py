"""TaNP's loss, its gradient and its predictions against the model written out in the test from its
weights (metarec/algos/tanp.py's docstring, one task at a time on its real ratings): algo.reference_loss
runs the package's own layers (net.decode, the MLPs), so it cannot catch a bug in them."""
import pytest
import torch
from fixtures import SPEC, rating_batch
from omegaconf import OmegaConf
from oracles import OFFSET, assert_equals_oracle, fields, linear, real_rows, relu_mlp

from metarec.algos.tanp import TaNP, TaNPConfig
from metarec.models.melu import MeLU

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny graphs, one thread

SIZES = dict(encoder_hidden=[5, 4], latent_dim=3, task_hidden=[5], task_dim=4, clusters=3, decoder_hidden=[6, 5],
             temperature=1.5, kl_weight=0.7, cluster_weight=1.3)  # weights not 1, so a dropped one shows


def make(modulation):
    torch.manual_seed(0)
    model = MeLU(SPEC, embedding_dim=3, hidden=[5, 4]).double()
    algo = TaNP(OmegaConf.merge(OmegaConf.structured(TaNPConfig), dict(modulation=modulation, **SIZES)), model, "rating")
    params = {**dict(model.named_parameters()), **{f"net.{n}": w for n, w in algo.net.named_parameters()}}
    return algo, params


def gaussian(p, h, y):
    """(mu, log variance) of z from a set of (x, centred y) pairs: their codes' mean, a ReLU layer, two heads."""
    r = relu_mlp(p, "net.latent_encoder.", torch.cat([h, y[:, None]], 1)).mean(0)
    hidden = torch.relu(linear(r, p["net.latent_hidden.weight"], p["net.latent_hidden.bias"]))
    return (linear(hidden, p["net.to_mu.weight"], p["net.to_mu.bias"]),
            linear(hidden, p["net.to_logvar.weight"], p["net.to_logvar.bias"]))


def task_memory(p, h, y):
    """(the soft assignment c [clusters] of the support set's task embedding to the centres by a Student-t
    kernel on the distance, the embedding plus sum_k c_k centre_k)."""
    task = relu_mlp(p, "net.task_encoder.", torch.cat([h, y[:, None]], 1)).mean(0)
    t = SIZES["temperature"]
    dist = torch.stack([((task - centre) ** 2).sum().sqrt() for centre in p["net.centres"]])
    kernel = (1 + dist / t) ** (-(t + 1) / 2)
    c = kernel / kernel.sum()
    return c, task + (c[:, None] * p["net.centres"]).sum(0)


def decode(p, h, z, task, gating):
    """Centred ratings [n]: (x, z) through hidden layers each linear, then times gamma plus beta (from the
    task embedding, tanh; gating mixes each with eta by a sigmoid gate), then a ReLU; one linear output."""
    a = torch.cat([h, z.expand(len(h), -1)], 1)
    for j in range(len(SIZES["decoder_hidden"])):
        m = p[f"net.film.{j}.weight"] @ task  # [(2 or 4) * width]
        width = p[f"net.hidden.{j}.weight"].shape[0]
        gamma, beta = torch.tanh(m[:width]), torch.tanh(m[width:2 * width])
        if gating:
            eta, gate = torch.tanh(m[2 * width:3 * width]), torch.sigmoid(m[3 * width:])
            gamma, beta = gate * gamma + (1 - gate) * eta, gate * beta + (1 - gate) * eta
        a = torch.relu(linear(a, p[f"net.hidden.{j}.weight"], p[f"net.hidden.{j}.bias"]) * gamma + beta)
    return linear(a, p["net.out.weight"], p["net.out.bias"])[:, 0]


def oracle_loss(p, batch, eps, gating):
    """mean_i [query MSE with z ~ q(z | support + query) + kl_weight KL(q(z | support + query) || q(z | support))]
    + cluster_weight KL(P || C) per task, P = C^2 / (C's sum over tasks), each row renormalised."""
    losses, assignments = [], []
    for i in range(batch.n_tasks):
        xs, ys, xq, yq = real_rows(batch, i)
        h_s, h_q, ys, yq = fields(p, xs), fields(p, xq), ys - OFFSET, yq - OFFSET
        mu_prior, logvar_prior = gaussian(p, h_s, ys)
        mu_post, logvar_post = gaussian(p, torch.cat([h_s, h_q]), torch.cat([ys, yq]))
        c, task = task_memory(p, h_s, ys)
        pred = decode(p, h_q, mu_post + eps[i] * logvar_post.exp().sqrt(), task, gating)
        var_post, var_prior = logvar_post.exp(), logvar_prior.exp()
        kl = 0.5 * (torch.log(var_prior / var_post) + (var_post + (mu_post - mu_prior) ** 2) / var_prior - 1).sum()
        losses.append(((pred - yq) ** 2).mean() + SIZES["kl_weight"] * kl)
        assignments.append(c)
    c = torch.stack(assignments)  # [tasks, clusters]
    target = c ** 2 / c.sum(0)
    target = target / target.sum(1, keepdim=True)
    clustering = (target * torch.log(target / c)).sum(1).mean()
    return torch.stack(losses).mean() + SIZES["cluster_weight"] * clustering


@pytest.mark.parametrize("modulation", ["film", "gating"])
def test_tanp_loss_and_gradient_equal_the_written_out_model(modulation):
    algo, params = make(modulation)
    batch = rating_batch(n_tasks=4)
    assert batch.support_mask.min() == 0 and batch.query_mask.min() == 0  # padding on both sides
    eps = torch.randn(batch.n_tasks, SIZES["latent_dim"], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    want = oracle_loss(params, batch, eps, modulation == "gating")
    grads = assert_equals_oracle(algo.meta_loss(batch, eps), want, params)
    assert all(float(g.abs().sum()) > 0 for n, g in grads.items() if not n.startswith("head."))  # every part learns


@pytest.mark.parametrize("modulation", ["film", "gating"])
def test_tanp_predictions_equal_the_written_out_model(modulation):
    """Evaluation's query ratings: z at the prior's mean (support only), the memory's task embedding."""
    algo, p = make(modulation)
    batch = rating_batch(n_tasks=4)
    got = algo.predict(batch)
    for i in range(batch.n_tasks):
        xs, ys, xq, _ = real_rows(batch, i)
        h_s = fields(p, xs)
        mu_prior, _ = gaussian(p, h_s, ys - OFFSET)
        want = OFFSET + decode(p, fields(p, xq), mu_prior, task_memory(p, h_s, ys - OFFSET)[1], modulation == "gating")
        assert torch.allclose(got[i][batch.query_mask[i] > 0], want, atol=1e-12, rtol=0), i
