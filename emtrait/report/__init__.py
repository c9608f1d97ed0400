"""Figures and the summary report (`emtrait report build`, rule `report`)."""

# Figure names: results/report/figures/{name}.png|.svg and workflow/report/{name}.rst captions.
FIGURES = ("drift_over_steps", "direction_magnitude", "pca_loadings_scree", "matched_profiles",
           "trait_cosines", "lopo_error_grid", "feature_ablation", "alarm_curves",
           "spearman_matrix", "permutation_null", "layer_comparison")

# The paper's headline numbers (arXiv 2606.07631), printed beside ours in summary.md.
PAPER = {"pc1_explained": 0.655, "fnr": 0.022, "fpr": 0.029, "auroc": 0.990}
