"""MeLU's four evaluation states and the cut years that make an item new, shared by the data set, the
results page and reports.

A state is the cold-start case a test task belongs to: whether its user and its items were seen in
meta-training. Plain names, no torch: metarec.reporting.results and metarec.reporting.report import this without a model.
"""

STATES = ("warm", "user_cold", "item_cold", "user_item_cold")
CUT_YEAR = {"ml-100k": 1996, "ml-1m": 1997}  # items whose title year is after it are new (data.cut_year=null)
MIN_TASKS = 30  # a state or validation set with fewer tasks warns, and a results page refuses to report it
