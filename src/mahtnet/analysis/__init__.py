"""Analysis of trained models: evaluation, statistics, clinical measurements, calibration,
robustness, explanations, the literature table, plots and the report."""
