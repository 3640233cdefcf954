"""The engine: one inner loop that adapts task batches (core.py), and the fast path a model gets by
declaring its form (forms.py): the hand-written MLP (hand.py) run per length group in Gram form
(groups.py), with MAML's second-order pass back written out (second_order.py); Reptile's inner Adam
(adam.py) runs on either."""
from metarec.engine.core import Engine, masked_task_loss
from metarec.engine.forms import FieldsForm, MLPForm
from metarec.engine.inner import InnerLoop, Params

__all__ = ["Engine", "FieldsForm", "InnerLoop", "MLPForm", "Params", "masked_task_loss"]
