import pytest
import yaml
from conftest import DELETE, edited

from mahtnet.config import ParamsError, load_params, parse_params


def test_repo_params_are_valid(params_raw):
    p = parse_params(params_raw)
    assert p.stage2.encoder_lr == 0.0
    assert p.baseline.epochs == p.stage1.epochs + p.stage2.epochs + p.stage3.epochs  # the same budget
    assert p.evaluate.sdr_thresholds_mm == [2.0, 2.5, 3.0, 4.0]


def test_unknown_key_is_named(params_raw, tmp_path):
    raw = edited(params_raw, "stage1.epoch", 3)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"params.yaml: unknown params key 'stage1.epoch'.*epochs"):
        load_params(path)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("train.augment.rotate", 3, r"'train.augment.rotate'"),
        ("trian", {}, r"'trian'"),
        ("stage3.lr", DELETE, "missing params key 'stage3.lr'"),
        ("stage1.epochs", "ten", "'stage1.epochs' must be an integer"),
        ("stage1.epochs", None, "'stage1.epochs' must be an integer"),
        ("stage2.lr", float("nan"), "'stage2.lr' must be finite"),
        ("stage2.lr", 0.0, "'stage2.lr' must be > 0"),
        ("stage3.encoder_lr", -1e-4, "'stage3.encoder_lr' must be >= 0"),
        ("data.gt", "average", "'data.gt'.*mean, senior, junior"),
        ("preprocess.height", 100, "multiple of 32"),
        ("stage1.scheduler", "step", "'stage1.scheduler'.*cosine, plateau"),
        ("stage1.select", "mre", "'stage1.select'.*val_mre_mm"),
        ("stage1.early_stopping.mode", "some", "'stage1.early_stopping.mode'.*all, any"),
        ("stage3.average", "ema", "'stage3.average'.*none, last, best"),
        ("stage2.loss_weights.softmax_ce", 0.0, "'stage2.loss_weights' needs at least one positive"),
        ("stage2.loss_weights.wing", -1.0, "'stage2.loss_weights.wing' must be >= 0"),
        ("stage2.loss_weights.dice", 1.0, "unknown params key 'stage2.loss_weights.dice'"),
        ("loss.output", "heatmap", "'baseline.loss_weights.softmax_ce' needs loss.output 'logits'"),
        ("train.accumulate_steps", 0, "'train.accumulate_steps' must be >= 1"),
        ("model.output_stride", 4, "'model.output_stride' must be 1 or 2"),
    ],
)
def test_bad_params_name_the_key(params_raw, key, value, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(edited(params_raw, key, value))


def test_every_profile_gives_both_models_the_same_epoch_budget(params_raw):
    """The U-Net's budget is explicit (so an ablation of the MAHT-Net stages' epochs does not
    re-train it) and equals the three MAHT-Net stages' total in params.yaml and every profile."""
    from conftest import REPO

    from mahtnet.config import load_profiles, with_settings

    for name, profile in load_profiles(REPO / "profiles.yaml", REPO).items():
        p = with_settings(params_raw, profile["set"])
        assert p.baseline.epochs == p.stage1.epochs + p.stage2.epochs + p.stage3.epochs, name
    from mahtnet.training.kinds import stage_epochs

    old = parse_params(edited(params_raw, "baseline.epochs", None))  # an older run's params still parse
    with pytest.raises(ParamsError, match="'baseline.epochs' must be an integer to train"):
        stage_epochs(old, "baseline")
