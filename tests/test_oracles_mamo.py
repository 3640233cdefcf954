"""MAMO's meta-loss, meta-gradient and memory write against the paper's rules written out in the test
(metarec/algos/mamo.py's docstring), with the model's forward from its weights (table lookups, genre
means, x @ W.T + b, leaky ReLU by hand), one task at a time on its real ratings: algo.reference_loss runs
the module's own forward, so it cannot catch a bug there."""
import pytest
import torch
from fixtures import SPEC, rating_batch
from omegaconf import OmegaConf
from oracles import OFFSET, assert_equals_oracle, fields, linear, real_rows, sgd, sgd_meta_loss

from metarec.algos.mamo import MAMO
from metarec.models.mamo import MAMONet

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny graphs, one thread

DIM = 3  # embedding_dim
USER = 4 * DIM  # p_u: the gender, age, occupation and zip embeddings, the first columns of the fields
LOCAL = ["user.weight", "user.bias", "item.weight", "item.bias", "pref.weight", "pref.bias",
         "net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]  # what the local update adapts
RATES = dict(profile_rate=0.5, bias_rate=0.3, pref_rate=0.2)  # alpha, beta, gamma
TAU, RHO, SLOTS = 0.5, 0.3, 3


def make(steps, first_order=False, convex=False):
    torch.manual_seed(0)
    model = MAMONet(SPEC, embedding_dim=DIM, hidden=[8, 6]).double()
    cfg = OmegaConf.create(dict(name="mamo", inner_steps=steps, inner_lr=RHO, first_order=first_order,
                                memory_slots=SLOTS, bias_scale=TAU, convex_write=convex, meta_lr=1e-3,
                                weight_decay=0.0, eval_steps=None, **RATES))
    algo = MAMO(cfg, model, "rating")
    g = torch.Generator().manual_seed(1)
    for buf in algo.memory.buffers():  # memories far from their start, so that what is read matters
        buf.copy_(torch.randn(buf.shape, generator=g, dtype=buf.dtype))
    return algo, dict(model.named_parameters())


def memories(algo):
    """(M_P [K, user], M_U: name -> [K, *shape], M_UI [K, d, d]) as they are now."""
    m = {k: v.clone() for k, v in algo.memory.state_dict().items()}
    return m["profile"], {"user.weight": m["user__weight"], "user.bias": m["user__bias"]}, m["pref"]


def leaky(t):
    return torch.where(t > 0, t, 0.01 * t)


def head(p, h):
    """Ratings [n]: the user and item towers, the preference matrix, one hidden layer, the output."""
    e_u = leaky(linear(h[:, :USER], p["user.weight"], p["user.bias"]))
    e_i = leaky(linear(h[:, USER:], p["item.weight"], p["item.bias"]))
    z = linear(torch.cat([e_u, e_i], 1), p["pref.weight"], p["pref.bias"])
    z = leaky(linear(z, p["net.0.weight"], p["net.0.bias"]))
    return OFFSET + linear(z, p["net.2.weight"], p["net.2.bias"])[:, 0]


def read(params, memory, xs):
    """(p_u, a_u, the local weights' start) of the user whose support rows are xs: a_u = softmax_k of the
    cosine of p_u with M_P[k]; theta_u = phi_u - tau sum_k a_uk M_U[k]; the preference matrix sum_k a_uk M_UI[k]."""
    m_p, m_u, m_ui = memory
    p_u = fields(params, xs[:1])[0, :USER]
    cos = torch.stack([(m @ p_u) / (m.norm() * p_u.norm()) for m in m_p])
    a = cos.exp() / cos.exp().sum()
    fast = {n: params[n] for n in LOCAL}
    for n, m in m_u.items():
        fast[n] = fast[n] - TAU * sum(a[k] * m[k] for k in range(SLOTS))
    fast["pref.weight"] = sum(a[k] * m_ui[k] for k in range(SLOTS))
    return p_u, a, fast


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [0, 1, 3])
def test_mamo_meta_loss_and_gradient_equal_the_written_out_oracle(steps, first_order):
    algo, params = make(steps, first_order)
    batch = rating_batch(n_tasks=4)
    assert batch.support_mask.min() == 0 and batch.query_mask.min() == 0  # padding on both sides
    memory = memories(algo)
    want = sgd_meta_loss(batch, lambda fast, x: head({**params, **fast}, fields(params, x)),
                         lambda xs: read(params, memory, xs)[2], RHO, steps, first_order)
    grads = assert_equals_oracle(algo.meta_loss(batch), want, params)
    assert float(grads["pref.weight"].abs().sum()) == 0  # each user's preference matrix starts from M_UI


@pytest.mark.parametrize("convex", [False, True])
def test_mamo_step_writes_the_memories_the_oracle_writes(convex):
    """After a meta-step, per slot k over the batch's B users: M <- r (1/B) sum_u a_uk x_u + (1 - r) M, or
    with convex_write M_k + r (1/B) sum_u a_uk (x_u - M_k); x_u is p_u for M_P, the user tower's gradient
    of the user's query loss at its adapted weights for M_U, the adapted preference matrix for M_UI."""
    algo, params = make(2, convex=convex)
    batch = rating_batch(n_tasks=4)
    memory = memories(algo)
    written = {"profile": [], "user.weight": [], "user.bias": [], "pref": []}
    attention = []
    for i in range(batch.n_tasks):
        xs, ys, xq, yq = real_rows(batch, i)
        p_u, a, fast = read(params, memory, xs)
        fast = sgd(lambda w, x: head({**params, **w}, fields(params, x)), fast, xs, ys, RHO, 2, False)
        query_loss = ((head({**params, **fast}, fields(params, xq)) - yq) ** 2).mean()
        g_w, g_b = torch.autograd.grad(query_loss, [fast["user.weight"], fast["user.bias"]])
        for name, x in (("profile", p_u), ("user.weight", g_w), ("user.bias", g_b), ("pref", fast["pref.weight"])):
            written[name].append(x.detach())
        attention.append(a.detach())
    m_p, m_u, m_ui = memory
    before = {"profile": m_p, "user.weight": m_u["user.weight"], "user.bias": m_u["user.bias"], "pref": m_ui}
    rate = {"profile": RATES["profile_rate"], "user.weight": RATES["bias_rate"], "user.bias": RATES["bias_rate"],
            "pref": RATES["pref_rate"]}
    algo.step(batch)
    after = memories(algo)
    after = {"profile": after[0], **after[1], "pref": after[2]}
    b = batch.n_tasks
    for name, xs in written.items():
        for k in range(SLOTS):
            pull = sum(attention[u][k] * (xs[u] - before[name][k] if convex else xs[u]) for u in range(b)) / b
            want = before[name][k] + rate[name] * pull if convex else rate[name] * pull + (1 - rate[name]) * before[name][k]
            assert torch.allclose(after[name][k], want, atol=1e-10, rtol=0), (name, k)
