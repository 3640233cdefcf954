"""Metrics against hand-computed values on small cases."""
import math

import pytest
import torch

from metarec.evaluate import format_table, headline_line, mean_ci, ndcg_at_k, paired_difference, rating_metrics
from metarec.tasks import TaskBatch


def test_ndcg_hand_computed_exp_and_linear_gain():
    rating = torch.tensor([[5.0, 3.0, 4.0, 1.0]])
    score = torch.tensor([[0.1, 0.9, 0.5, 0.2]])  # ranks: item1 (3), item2 (4), item3 (1), item0 (5)
    mask = torch.ones(1, 4)
    g = torch.Generator().manual_seed(0)
    d = [1 / math.log2(i + 2) for i in range(4)]
    exp_dcg = (2**3 - 1) * d[0] + (2**4 - 1) * d[1] + (2**1 - 1) * d[2]
    exp_idcg = (2**5 - 1) * d[0] + (2**4 - 1) * d[1] + (2**3 - 1) * d[2]
    assert ndcg_at_k(score, rating, mask, 3, "exp", g).item() == pytest.approx(exp_dcg / exp_idcg)
    lin = (3 * d[0] + 4 * d[1] + 1 * d[2]) / (5 * d[0] + 4 * d[1] + 3 * d[2])
    assert ndcg_at_k(score, rating, mask, 3, "linear", g).item() == pytest.approx(lin)
    assert ndcg_at_k(score, rating, mask, 1, "linear", g).item() == pytest.approx(3 / 5)


def test_ndcg_ignores_padding_and_breaks_ties_at_random():
    rating = torch.tensor([[5.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert ndcg_at_k(torch.tensor([[1.0, 0.0, 9.0]]), rating, mask, 1, "exp", torch.Generator()).item() == 1.0
    # constant scores: over many seeds the mean is the random-order level, not 0 or 1
    tied = torch.zeros(2000, 2)
    r = torch.tensor([[5.0, 1.0]]).expand(2000, 2)
    v = ndcg_at_k(tied, r, torch.ones(2000, 2), 1, "linear", torch.Generator().manual_seed(1)).mean().item()
    assert v == pytest.approx((1.0 + 0.2) / 2, abs=0.03)


def test_mae_rmse_and_ci_hand_computed():
    y = torch.tensor([[4.0, 2.0, 0.0], [3.0, 3.0, 3.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    pred = torch.tensor([[3.0, 4.0, 9.0], [3.0, 3.0, 4.0]])
    batch = TaskBatch(y[:, :, None], y, m, y[:, :, None], y, m)
    out = rating_metrics(pred, batch, "exp", 0)
    assert out["mae"].tolist() == pytest.approx([1.5, 1 / 3])
    assert out["rmse"].tolist() == pytest.approx([math.sqrt(2.5), math.sqrt(1 / 3)])
    assert {"ndcg@3", "ndcg_lin@3"} <= set(out)
    mean, ci = mean_ci(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and ci == pytest.approx(1.96 * math.sqrt(5 / 3) / 2)


def test_paired_difference():
    mean, se = paired_difference([1.0, 2.0, 3.0], [0.5, 2.0, 2.0])
    assert mean == pytest.approx(0.5) and se == pytest.approx(0.5 / math.sqrt(3))


def test_validation_scores_only_the_last_step_with_the_same_numbers():
    """only_last=True (validation: the headline step) predicts the query set once, not after every step."""
    from fixtures import SPEC, rating_batch
    from omegaconf import OmegaConf

    from metarec.algos.maml import MAML
    from metarec.evaluate import evaluate_state
    from metarec.models.melu import MeLU
    torch.manual_seed(0)
    cfg = OmegaConf.create(dict(inner_lr=0.3, inner_steps=2, first_order=False, inner_params="mlp", meta_lr=1e-3,
                                learn_inner_lr=False, weight_decay=0.0))
    algo = MAML(cfg, MeLU(SPEC, embedding_dim=6, hidden=[8, 8]).double(), "rating")
    batch = rating_batch(n_tasks=6, support=(1, 9))
    full = evaluate_state(algo, batch, "rating", 3, "exp", chunk=4)
    last = evaluate_state(algo, batch, "rating", 3, "exp", chunk=4, only_last=True)
    assert list(full["steps"]) == ["0", "1", "2", "3"] and list(last["steps"]) == ["3"]
    assert last["steps"]["3"] == full["steps"]["3"] and last["per_task"]["3"] == full["per_task"]["3"]


def test_eval_md_opens_with_the_method_against_the_best_floor_by_hand():
    state = {"n_tasks": 3, "headline_step": "1",
             "steps": {"0": {"mae": 0.9, "mae_ci": 0.0}, "1": {"mae": 0.7, "mae_ci": 0.0}},
             "per_task": {"0": {"mae": [0.9, 0.9, 0.9]}, "1": {"mae": [0.6, 0.7, 0.8]}},
             "floors": {"bias": {"mae": 0.8, "mae_ci": 0.0}, "mf_foldin": {"mae": 0.75, "mae_ci": 0.0},
                        "random": {"ndcg@3": 0.5, "ndcg@3_ci": 0.0}},
             "floors_per_task": {"bias": {"mae": [0.8, 0.8, 0.8]}, "mf_foldin": {"mae": [0.7, 0.7, 0.85]},
                                 "random": {"ndcg@3": [0.5, 0.5, 0.5]}}}
    result = {"states": {"warm": {**state, "floors": {"bias": {"mae": 0.1, "mae_ci": 0.0}}}, "user_cold": state}}
    # user_cold first; its best floor is mf_foldin (0.75 < 0.8); d = [-0.1, 0, -0.05]: mean -0.05,
    # sd 0.05, SE 0.05 / sqrt(3) = 0.028868
    line = headline_line(result)
    assert line == ("**user_cold**: MAE 0.7000 after 1 steps against the best floor, mf_foldin 0.7500: paired "
                    "difference -0.0500 ± 0.0289 (-1.7 SE) over 3 tasks (negative: the method is better).")
    assert format_table(result, "maml on movielens").splitlines()[:3] == ["# maml on movielens", "", line]
    assert headline_line({"states": {"test": {"n_tasks": 2, "steps": {}, "per_task": {}}}}) is None  # no floors


def test_the_headline_compares_a_row_with_the_floors_of_its_own_input_class():
    state = {"n_tasks": 2, "headline_step": "0", "input_class": "inductive",
             "steps": {"0": {"mae": 0.7, "mae_ci": 0.0}}, "per_task": {"0": {"mae": [0.6, 0.8]}},
             "floors": {"bias": {"mae": 0.8, "mae_ci": 0.0}, "bias_transductive": {"mae": 0.5, "mae_ci": 0.0}},
             "floors_per_task": {"bias": {"mae": [0.7, 0.9]}, "bias_transductive": {"mae": [0.5, 0.5]}},
             "floor_classes": {"bias": "inductive", "bias_transductive": "transductive"}}
    # the lower floor is transductive: an inductive row meets bias, d = [-0.1, -0.1], SE 0
    line = headline_line({"states": {"item_cold": state}})
    assert line.startswith("**item_cold**: MAE 0.7000 after 0 steps against the best inductive floor, bias 0.8000: "
                           "paired difference -0.1000 ± 0.0000 over 2 tasks")
    text = format_table({"states": {"item_cold": state}})
    assert "## item_cold (2 tasks, headline after 0 steps, inductive)" in text
    assert "| floor: bias_transductive (transductive) |" in text and "| floor: bias (inductive) |" in text
    state["input_class"] = "transductive"
    assert "the best transductive floor, bias_transductive 0.5000" in headline_line({"states": {"item_cold": state}})
