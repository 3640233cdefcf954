"""Metrics against hand-computed values on small cases."""
import math

import pytest
import torch

from metarec.evaluation.evaluate import format_table, headline_line, mean_ci, ndcg_at_k, paired_difference, rating_metrics
from metarec.tasks import TaskBatch, TaskSource


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
    from metarec.evaluation.evaluate import evaluate_state
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
def test_accuracy_and_mse_hand_computed_over_the_real_query_examples():
    from metarec.evaluation.evaluate import task_metrics
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    y = torch.tensor([[0, 1, 2, 2], [1, 0, 0, 0]])
    logits = torch.zeros(2, 4, 3)
    logits[0, 0, 0] = logits[0, 1, 2] = logits[0, 2, 2] = logits[0, 3, 2] = 1.0  # right, wrong, right, padding
    logits[1, 0, 0] = 1.0  # wrong; the padded positions would be right
    batch = TaskBatch(y[:, :, None], y, m, y[:, :, None], y, m)
    assert task_metrics(logits, batch, "classification")["acc"].tolist() == pytest.approx([2 / 3, 0.0])
    yr = torch.tensor([[1.0, -1.0, 0.5, 7.0], [2.0, 0.0, 0.0, 0.0]])
    pred = torch.tensor([[0.0, 1.0, 0.5, 0.0], [-1.0, 5.0, 5.0, 5.0]])
    batch = TaskBatch(yr[:, :, None], yr, m, yr[:, :, None], yr, m)
    assert task_metrics(pred, batch, "regression")["mse"].tolist() == pytest.approx([(1 + 4 + 0) / 3, 9.0])


class StepAlgo:
    """A stand-in method whose query prediction after k adaptation steps is k + the task's index
    (known numbers, so the bookkeeping of steps, chunks and the headline can be checked by hand)."""

    one_pass, select_state = False, "val"

    def __init__(self):
        self.calls, self.states = [], []

    def enter_state(self, state):
        self.states.append(state)

    def phase(self):
        return None

    def adapt_trace(self, batch, steps, at=None):
        self.calls.append((batch.n_tasks, steps, at))
        task = batch.query_x[:, :1, 0]  # [tasks, 1]: each task's index, planted in its inputs
        return [torch.zeros_like(batch.query_y) + task + k for k in (at if at is not None else range(steps + 1))]


def step_batch(n_tasks=5):
    """Regression tasks: task i's query x are all i, its targets y = (1, 2, ...) over 1 + i % 3 real examples."""
    q = 3
    x = torch.arange(n_tasks, dtype=torch.float64)[:, None, None].expand(n_tasks, q, 1).clone()
    y = torch.arange(1, q + 1, dtype=torch.float64).expand(n_tasks, q).clone()
    m = (torch.arange(q)[None] < (1 + torch.arange(n_tasks) % 3)[:, None]).double()
    return TaskBatch(x, y, m, x, y, m)


def hand_mse(task, k):
    n = 1 + task % 3
    return sum((task + k - (j + 1)) ** 2 for j in range(n)) / n


def test_evaluate_state_scores_every_step_of_every_task_across_chunks():
    from metarec.evaluation.evaluate import evaluate_state
    algo = StepAlgo()
    r = evaluate_state(algo, step_batch(5), "regression", 2, "exp", chunk=2,
                       floors={"zero": torch.zeros(5, 3, dtype=torch.float64)})
    assert algo.calls == [(2, 2, None), (2, 2, None), (1, 2, None)]  # chunks of 2, 2 and 1 tasks
    assert r["n_tasks"] == 5 and list(r["steps"]) == ["0", "1", "2"]
    for k in range(3):
        expected = [hand_mse(i, k) for i in range(5)]
        assert r["per_task"][str(k)]["mse"] == pytest.approx(expected, abs=1e-6)
        assert r["steps"][str(k)]["mse"] == pytest.approx(sum(expected) / 5)
        sd = math.sqrt(sum((e - sum(expected) / 5) ** 2 for e in expected) / 4)
        assert r["steps"][str(k)]["mse_ci"] == pytest.approx(1.96 * sd / math.sqrt(5))
    zero = [sum((j + 1) ** 2 for j in range(1 + i % 3)) / (1 + i % 3) for i in range(5)]
    assert r["floors_per_task"]["zero"]["mse"] == pytest.approx(zero) and r["floors"]["zero"]["mse"] == pytest.approx(sum(zero) / 5)
    last = evaluate_state(StepAlgo(), step_batch(5), "regression", 2, "exp", chunk=2, only_last=True)
    assert list(last["steps"]) == ["2"] and last["per_task"]["2"] == r["per_task"]["2"]


class StepSource(TaskSource):
    """A generated regression source: TaskSource's defaults (inductive, no rating scale) for the rest."""
    kind = "regression"

    def eval_tasks(self, split):
        return {"val": step_batch(4)} if split == "val" else {"test": step_batch(5), "other": step_batch(3)}

    def floors(self, state):
        return {}


def test_evaluate_all_books_the_headline_step_and_the_steps_it_scores():
    from omegaconf import OmegaConf

    from metarec.evaluation.evaluate import evaluate_all
    cfg = OmegaConf.create({"seed": 0, "algo": {"eval_steps": None, "inner_steps": 3},
                            "eval": {"max_steps": 5, "ndcg_gain": "exp", "chunk": 10}})
    algo = StepAlgo()
    result = evaluate_all(cfg, StepSource(), algo, "test")
    assert list(result["states"]) == ["test", "other"] and algo.states == ["test", "other"]
    test = result["states"]["test"]
    assert test["headline_step"] == "3" and list(test["steps"]) == [str(k) for k in range(6)]  # 0..max(5, 3)
    assert test["steps"]["3"]["mse"] == pytest.approx(sum(hand_mse(i, 3) for i in range(5)) / 5)
    cfg.algo.eval_steps, cfg.eval.max_steps = 7, 2  # eval_steps wins over inner_steps; max_steps never cuts it
    test = evaluate_all(cfg, StepSource(), StepAlgo(), "test")["states"]["test"]
    assert test["headline_step"] == "7" and list(test["steps"]) == [str(k) for k in range(8)]
    # the trainer's model selection: the val state alone, scored once, at the headline step
    algo = StepAlgo()
    val = evaluate_all(cfg, StepSource(), algo, "val", select=True)["states"]
    assert list(val) == ["val"] and list(val["val"]["steps"]) == ["7"] and algo.calls == [(4, 7, [7])]
    assert val["val"]["steps"]["7"]["mse"] == pytest.approx(sum(hand_mse(i, 7) for i in range(4)) / 4)


def test_ndcg_of_a_task_does_not_depend_on_the_evaluation_chunk():
    """Ties break by keys drawn per task, so eval.chunk (a memory knob) never moves a number: a tied
    predictor scored in chunks of 3 gives each task the value it gets in one chunk."""
    from metarec.evaluation.evaluate import evaluate_state

    class Constant:
        def adapt_trace(self, batch, steps, at=None):
            return [torch.zeros_like(batch.query_y) for _ in (at or range(steps + 1))]

    g = torch.Generator().manual_seed(0)
    y = torch.randint(1, 6, (20, 5), generator=g).float()
    m = torch.ones(20, 5)
    batch = TaskBatch(y[:, :, None], y, m, y[:, :, None], y, m)
    one = evaluate_state(Constant(), batch, "rating", 0, "exp", chunk=100, seed=7)
    split = evaluate_state(Constant(), batch, "rating", 0, "exp", chunk=3, seed=7)
    for name in ("ndcg@1", "ndcg@3", "ndcg_lin@5"):
        assert split["steps"]["0"][name] == one["steps"]["0"][name]
    assert one["per_task"]["0"]["ndcg@3"] == split["per_task"]["0"]["ndcg@3"]
    tied = [v for v in one["per_task"]["0"]["ndcg@3"]]
    assert len(set(tied)) > 1  # the ties really are broken at random, per task
