"""Statistics of the analysis step: ICC (icc), cross-validation protocols (classify), the MLP (mlp)."""
