"""The four covariance types, scikit-learn's names (without torch: the CLI checks them first)."""

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
