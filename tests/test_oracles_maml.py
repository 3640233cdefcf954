"""MAML's meta-loss and meta-gradient on MeLU against an oracle written out in the test (tests/oracles.py):
MeLU's forward from its weights (table lookups, genre means, x @ W.T + b, ReLU), the squared error by
hand and SGD by torch.autograd.grad one task at a time on its real rows. metarec/bench/reference.py
runs the model's own forward and the package's loss, so it cannot catch a bug in either."""
import pytest
import torch
from fixtures import SPEC, rating_batch
from omegaconf import OmegaConf
from oracles import assert_equals_oracle, assert_maml_on_melu_is_the_oracle, melu, sgd_meta_loss

from metarec.algos.maml import MAML, MAMLConfig
from metarec.models.melu import MeLU

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny graphs, one thread

MLP = ["head.net.0.weight", "head.net.0.bias", "head.net.2.weight", "head.net.2.bias",
       "head.net.4.weight", "head.net.4.bias"]
ADAPTED = {  # algo.inner_params -> what the inner loop adapts, as the model's docstring says
    "mlp": MLP,
    "last": MLP[-2:],  # ANIL: the output layer
    "all": [f"encoder.embeddings.{name}.weight" for name, _ in SPEC["fields"]] + ["encoder.multi.weight"] + MLP,
}


def make(inner_params, first_order, fast_paths=True, learn_inner_lr=False):
    torch.manual_seed(0)
    model = MeLU(SPEC, embedding_dim=3, hidden=[5, 4]).double()
    cfg = OmegaConf.structured(MAMLConfig(inner_lr=0.3, inner_steps=2, first_order=first_order,
                                          inner_params=inner_params, learn_inner_lr=learn_inner_lr))
    return model, MAML(cfg, model, "rating", fast_paths=fast_paths)


@pytest.mark.parametrize("fast_paths", [True, False])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("inner_params", ["mlp", "last", "all"])
def test_maml_meta_loss_and_gradient_equal_the_written_out_oracle(inner_params, first_order, fast_paths):
    model, algo = make(inner_params, first_order, fast_paths)
    assert_maml_on_melu_is_the_oracle(model, algo, ADAPTED[inner_params], first_order)


def test_meta_sgd_rates_are_per_weight_and_learned_as_the_oracle_says():
    """Meta-SGD: each adapted weight steps by its own rate, and the rates get the oracle's meta-gradient."""
    model, algo = make("mlp", False, learn_inner_lr=True)
    g = torch.Generator().manual_seed(3)
    for rate in algo.inner_lrs.values():  # rates that differ weight by weight, so a mix-up shows
        rate.data.copy_(0.05 + 0.3 * torch.rand(rate.shape, generator=g, dtype=rate.dtype))
    rates = {n: algo.inner_lrs[n.replace(".", "__")] for n in MLP}
    batch = rating_batch(n_tasks=4)
    params = dict(model.named_parameters())
    want = sgd_meta_loss(batch, lambda fast, x: melu({**params, **fast}, x),
                         lambda xs: {n: params[n] for n in MLP}, rates, 2, False)
    assert_equals_oracle(algo.meta_loss(batch), want, {**params, **{f"rate {n}": r for n, r in rates.items()}})
