"""Stage (search/dvc.yaml, outside the default pipeline): an Optuna study over
``search.space`` on the training images, scored on validation images only; writes
``metrics/search.json`` (counts, best trial, the ``dvc exp run`` line that retrains it) and
the study's plots. More workers, on this or other machines, join the same study with
``--worker`` (same ``search.study`` and ``search.storage``)::

    dvc repro search/dvc.yaml
    python stages/search.py --prepared data/prepared --work data/search --worker   # another worker
"""

import argparse
from pathlib import Path

import yaml

from mahtnet.config import load_params
from mahtnet.data.preprocess import PreparedSet
from mahtnet.errors import run_cli
from mahtnet.io import write_json
from mahtnet.training.search import create_study, plot_study, search, study_run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prepared", required=True, type=Path, help="train.npz + val.npz (no test.npz read)")
    parser.add_argument("--work", required=True, type=Path, help="per-trial checkpoints and histories")
    parser.add_argument("--out", type=Path, help="metrics/search.json (not with --worker)")
    parser.add_argument("--plots", type=Path, help="folder of the study's plots (not with --worker)")
    parser.add_argument("--worker", action="store_true", help="only run trials (another worker)")
    args = parser.parse_args()
    params = load_params()
    raw = yaml.safe_load(Path("params.yaml").read_text())
    train_set = PreparedSet.load(args.prepared / "train.npz")
    val_set = PreparedSet.load(args.prepared / "val.npz")
    study = create_study(params, worker=args.worker)
    with study_run(params, study) as run:  # one MLflow run per study, all workers
        study, summary = search(raw, params, train_set, val_set, args.work, run, args.worker, study)
        run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        if args.worker:
            return
        write_json(args.out, summary)
        for path in plot_study(study, args.plots):
            run.log_artifact(path)
    t = summary["trials"]
    print(f"study '{summary['study']}': {t['complete']} complete, {t['pruned']} pruned, {t['fail']} failed")
    if "best_value_mm" in summary:
        print(f"best trial {summary['best_trial']}: validation MRE {summary['best_value_mm']:.3f} mm")
        print(f"retrain it with the full pipeline:\n  {summary['dvc_exp_run']}")


if __name__ == "__main__":
    run_cli(main)
