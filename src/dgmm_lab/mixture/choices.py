"""The estimator's word-valued settings (without torch: the CLI checks them first)."""

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")
INIT_SELECTIONS = ("likelihood", "entropy")
