"""The kinds of training stage, one row each in :data:`STAGE_KINDS`: the architecture it trains,
the ``params.yaml`` block of its schedule, the stage script that runs it and what it starts from.
Code asks a :class:`StageKind` what a stage does (``kind.teacher``, ``kind.prunes``), never its
name; the scripts' ``--stage`` choices are the rows of their script."""

from __future__ import annotations

import dataclasses
import operator

from mahtnet.config import Params, ParamsError, StageParams


@dataclasses.dataclass(frozen=True)
class StageKind:
    name: str  # the ``--stage`` value, the task's name and the DVC stage's ``train_<name>``
    model: str  # the architecture trained: "unet", "maht_net" or "refiner"
    schedule: str  # the params.yaml block of its schedule (a StageParams), dotted
    script: str  # the stage script that trains it, under stages/
    init: str | None = None  # the kind whose checkpoint it starts from (dvc.yaml's --init)
    epochs_of: str | None = "baseline"  # the kind whose budget a null ``epochs`` means; None: required
    student: bool = False  # a U-Net of ``distill.student_channels``
    teacher: bool = False  # the teacher's heatmaps (``--teacher``) as soft targets (``distill``)
    prunes: bool = False  # channel-prunes its initial model (required) before fine-tuning it


STAGE_KINDS: dict[str, StageKind] = {
    k.name: k
    for k in (
        StageKind("baseline", "unet", "baseline", "train.py", epochs_of=None),
        StageKind("stage1", "maht_net", "stage1", "train.py"),
        StageKind("stage2", "maht_net", "stage2", "train.py", init="stage1"),
        StageKind("stage3", "maht_net", "stage3", "train.py", init="stage2"),
        StageKind("student", "unet", "distill.train", "train.py", student=True),
        StageKind("distill", "unet", "distill.train", "train.py", student=True, teacher=True),
        StageKind("prune", "maht_net", "prune.train", "train_prune.py", init="stage3", prunes=True),
        StageKind("refine", "refiner", "refine.train", "train_refiner.py", epochs_of=None),
    )
}


def stage_kind(name: str) -> StageKind:
    """The row of ``name``; an unknown name is a ``KeyError`` that lists the valid ones."""
    if name not in STAGE_KINDS:
        raise KeyError(f"unknown training stage {name!r}; valid: {', '.join(STAGE_KINDS)}")
    return STAGE_KINDS[name]


def kinds_of_script(script: str) -> tuple[str, ...]:
    """The names of the kinds that ``stages/<script>`` trains (its ``--stage`` choices)."""
    return tuple(k.name for k in STAGE_KINDS.values() if k.script == script)


def stage_params(p: Params, stage: str) -> StageParams:
    """The schedule block of a training stage (the students share ``distill.train``, the
    pruned models ``prune.train``)."""
    return operator.attrgetter(stage_kind(stage).schedule)(p)


def stage_epochs(p: Params, stage: str) -> int:
    """Epoch budget of ``stage``; the students' null means the baseline's. The baseline's must
    be given (a null one, as in runs before it was made explicit, still parses, for their
    evaluation): its DVC stage does not track the MAHT-Net stages' epochs."""
    kind = stage_kind(stage)
    epochs = stage_params(p, stage).epochs
    if epochs is None and kind.epochs_of is None:
        raise ParamsError(
            f"params key '{kind.schedule}.epochs' must be an integer to train: the U-Net's budget, the three "
            "MAHT-Net stages' total (null is not tracked by the train_baseline stage)"
        )
    return stage_epochs(p, kind.epochs_of) if epochs is None else epochs
