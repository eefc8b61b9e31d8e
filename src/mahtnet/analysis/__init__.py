"""Analysis of trained models: evaluation, statistics, calibration, robustness, explanations,
the literature table, plots and the report."""
