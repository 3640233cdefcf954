"""The names of MeLU's four evaluation states, shared by the data set, the results page and reports.

A state is the cold-start case a test task belongs to: whether its user and its items were seen in
meta-training. Plain names, no torch: metarec.results and metarec.report import this without a model.
"""

STATES = ("warm", "user_cold", "item_cold", "user_item_cold")
