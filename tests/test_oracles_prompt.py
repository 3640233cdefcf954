"""algo=prompt's meta-loss and meta-gradient against an oracle written out in the test (tests/oracles.py):
MeLU's forward from its weights with the prompt vectors joined to every row, and per-task SGD by hand on
what the inner loop adapts: the MLP with the prompt fixed (adapt=theta) or the prompt alone (adapt=prompt)."""
import pytest
import torch
from fixtures import SPEC
from omegaconf import OmegaConf
from oracles import assert_maml_on_melu_is_the_oracle

from metarec.algos.prompt import Prompt, PromptConfig
from metarec.models.melu import MeLU

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny graphs, one thread

ADAPTED = {  # algo.adapt -> what the inner loop adapts (algo.inner_params=mlp)
    "theta": [f"head.net.{k}.{w}" for k in (0, 2, 4) for w in ("weight", "bias")],
    "prompt": ["head.prompt"],
}


@pytest.mark.parametrize("fast_paths", [True, False])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("adapt", ["theta", "prompt"])
def test_prompt_meta_loss_and_gradient_equal_the_written_out_oracle(adapt, first_order, fast_paths):
    torch.manual_seed(0)
    model = MeLU(SPEC, embedding_dim=3, hidden=[5, 4], prompt_len=2, prompt_dim=3).double()
    cfg = OmegaConf.structured(PromptConfig(inner_lr=0.3, inner_steps=2, first_order=first_order, inner_params="mlp",
                                            prompt_len=2, prompt_dim=3, adapt=adapt))
    algo = Prompt(cfg, model, "rating", fast_paths=fast_paths)
    grads = assert_maml_on_melu_is_the_oracle(model, algo, ADAPTED[adapt], first_order)
    assert grads["head.prompt"].abs().sum() > 0  # the prompt's start is meta-learned in both modes
