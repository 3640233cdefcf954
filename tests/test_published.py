"""The results page's "as published" section against hand-computed cells."""
from metarec.reporting.published import published_lines
from metarec.reporting.results_page import _pm


def test_published_section_shows_the_paper_ours_the_difference_and_the_best_inductive_floor():
    table = {"user_cold": {"melu_paper": {"mae": (0.80, 0.01)}, "floor: bias": {"mae": (0.79, 0.0)},
                           "floor: mf_foldin": {"mae": (0.78, 0.0)}, "floor: bias_transductive": {"mae": (0.70, 0.0)}},
             "warm": {"maml": {"mae": (0.7, 0.0)}}}  # no melu_paper row: the state is left out
    lines = published_lines({"table": table}, "ml-1m", _pm)
    rows = [line for line in lines if line.startswith("| user_cold")]
    assert rows == ["| user_cold | 0.7854 | 0.8000 ± 0.0100 | +0.0146 | mf_foldin 0.7800 |"]
    assert not any(line.startswith("| warm") for line in lines)
    assert published_lines({"table": table}, "ml-100k", _pm) == []  # nothing published for it
