"""The offline studies over finished runs, each writing its part of the docs: the ablation
study, the training-protocol study and its run snapshots, the adaptation study and the
reference method scored by our evaluator."""
