"""Training: the stages as tasks (``stages``), the loop that runs them (``loop``), losses, the
refiner's patches and task, pruning, cross-validation and the hyper-parameter search."""
