"""Evaluate a reader (a :class:`mahtnet.decoding.recipe.ReaderSpec` loaded), or an ensemble of
coarse networks, on a prepared split: MRE / SDR overall and per landmark, at the original
image resolution."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from tqdm import tqdm

from mahtnet import clinical, metrics
from mahtnet.analysis.plots import plot_confidence, plot_predictions
from mahtnet.data.fine import FineSet
from mahtnet.data.preprocess import PreparedSet
from mahtnet.decoding import LandmarkReader
from mahtnet.decoding.recipe import ReaderSpec, load_reader
from mahtnet.io import atomic_write

SDR_CURVE_MM = tuple(np.round(np.arange(0.5, 10.01, 0.25), 2))


@dataclasses.dataclass
class Evaluation:
    ids: np.ndarray  # (N,)
    pred: np.ndarray  # (N, K, 2) original px
    gt: np.ndarray  # (N, K, 2) original px: the dataset's official ground truth (isbi.OFFICIAL_GT)
    errors_mm: np.ndarray  # (N, K) against ``gt``
    spacing: np.ndarray  # (N,) mm per original pixel
    confidence: np.ndarray  # (N, K)
    landmark_names: list[str]
    thresholds_mm: list[float]
    data: PreparedSet  # the evaluated images and both doctors' annotations

    def summary(self, gt: str = "official") -> dict[str, float]:
        """MRE / SD / median / SDR, gross errors (over 10 and 15 mm) and the MRE in px against
        one ground truth (:meth:`doctors`; default the official one)."""
        errors = self.errors_mm if gt == "official" else self.errors_against(self.doctors()[gt])
        out = metrics.summarize(errors, self.thresholds_mm)
        out.update(metrics.gross_errors(errors))
        out["n_over_15mm"] = int((errors > 15.0).sum())
        out["mre_px"] = float((errors / self.spacing[:, None]).mean())
        out["images"] = len(self.ids)
        return out

    def errors_against(self, points: np.ndarray) -> np.ndarray:
        return metrics.radial_errors_mm(self.pred, points, self.spacing)

    def doctors(self) -> dict[str, np.ndarray]:
        """Each ground truth: the official one, the mean of both doctors, the senior's and the
        junior's."""
        senior, junior = self.data.senior_orig, self.data.junior_orig
        return {"official": self.gt, "mean": (senior + junior) / 2.0, "senior": senior, "junior": junior}

    def by_ground_truth(self) -> dict[str, dict[str, float]]:
        """MRE / SD / median / SDR against each ground truth, and the inter-observer error
        (senior vs junior: the agreement of the two doctors, a floor for any model)."""
        out = {
            gt: metrics.summarize(self.errors_against(points), self.thresholds_mm)
            for gt, points in self.doctors().items()
        }
        inter = metrics.radial_errors_mm(self.data.senior_orig, self.data.junior_orig, self.spacing)
        out["inter_observer"] = metrics.summarize(inter, self.thresholds_mm)
        return out

    def block(self) -> dict:
        """This set's scores: the headline against the official ground truth and against the
        mean of both doctors, every ground truth and the inter-observer error (``by_gt``),
        confidence-vs-error correlation and clinical classification accuracy."""
        return {
            "official": self.summary("official"),
            "mean": self.summary("mean"),
            "by_gt": self.by_ground_truth(),
            "confidence": self.confidence_vs_error(),
            "clinical": self.clinical(),
        }

    def confidence_vs_error(self) -> dict[str, float]:
        """Spearman rank correlation between the predicted confidence and the radial error over
        all (image, landmark) pairs (negative: confident predictions are the accurate ones)."""
        c, e = self.confidence.ravel(), self.errors_mm.ravel()
        if np.ptp(c) == 0 or np.ptp(e) == 0:  # a constant input: no correlation defined
            return {"spearman_rho": 0.0, "p_value": 1.0}
        rho, p = stats.spearmanr(c, e)
        rho = float(rho) if np.isfinite(rho) else 0.0
        return {"spearman_rho": rho, "p_value": float(p) if np.isfinite(p) else 1.0}

    def clinical(self) -> dict[str, dict[str, float]]:
        """ISBI 2015 task 2: classification accuracy (%) of the eight measurements from the
        predicted landmarks against those from the ground truth; the doctors' agreement
        (senior vs junior landmarks) beside it."""
        return {
            "accuracy": clinical.classification_accuracy(self.pred, self.gt, self.spacing),
            "inter_observer": clinical.classification_accuracy(
                self.data.senior_orig, self.data.junior_orig, self.spacing
            ),
        }

    def per_landmark(self) -> list[dict]:
        return metrics.per_landmark(self.errors_mm, self.thresholds_mm, self.landmark_names)

    def per_image(self, gt: str = "official") -> pd.DataFrame:
        """Per-image, per-landmark errors (mm) against one ground truth (:meth:`doctors`)."""
        errors = self.errors_mm if gt == "official" else self.errors_against(self.doctors()[gt])
        df = pd.DataFrame(errors, columns=self.landmark_names)
        df.insert(0, "mre_mm", errors.mean(axis=1))
        df.insert(0, "image_id", self.ids)
        return df

    def predictions(self) -> pd.DataFrame:
        """Predicted landmarks (original px) and confidences, one row per image and landmark."""
        n, k = self.errors_mm.shape
        return pd.DataFrame(
            {
                "image_id": np.repeat(self.ids, k),
                "landmark": np.tile(self.landmark_names, n),
                "x": self.pred[..., 0].ravel(),
                "y": self.pred[..., 1].ravel(),
                "confidence": self.confidence.ravel(),
                "error_mm": self.errors_mm.ravel(),
            }
        )

    def plot_overlays(self, folder: str | Path, title: str) -> list[Path]:
        """The best and worst test images (lowest / highest per-image MRE): predicted vs
        ground-truth landmarks with their names, on the network-input image."""
        image_mre = self.errors_mm.mean(axis=1)
        paths = []
        for which, i in (("best", int(np.argmin(image_mre))), ("worst", int(np.argmax(image_mre)))):
            box = self.data.letterbox(i)
            label = f"{title}: {which} image {self.ids[i]}, MRE {image_mre[i]:.2f} mm"
            path = Path(folder) / f"overlay_{which}.png"
            pred, gt = box.to_prepared(self.pred[i]), box.to_prepared(self.gt[i])
            paths.append(plot_predictions(self.data.images[i], pred, gt, self.landmark_names, label, path))
        return paths

    def write(self, plots_dir: str | Path | None = None, per_image_path: str | Path | None = None) -> None:
        """``plots_dir``: per-landmark and SDR-curve CSVs (DVC plots), the confidence plot and
        best / worst overlays; ``per_image_path``: per-image, per-landmark errors against the
        official ground truth (and ``<stem>_predictions.csv`` beside it). The scores are
        :meth:`block`'s, written by the caller."""
        if plots_dir is not None:
            plots_dir = Path(plots_dir)
            write_csv(plots_dir / "per_landmark.csv", pd.DataFrame(self.per_landmark()))
            curve = metrics.sdr_curve(self.errors_mm, SDR_CURVE_MM)
            write_csv(plots_dir / "sdr_curve.csv", pd.DataFrame(curve))
            plot_confidence(self.confidence, self.errors_mm, plots_dir / "confidence.png")
            self.plot_overlays(plots_dir, plots_dir.name)
        if per_image_path is not None:
            per_image_path = Path(per_image_path)
            write_csv(per_image_path, self.per_image())
            stem = per_image_path.stem.removesuffix("_per_image")
            write_csv(per_image_path.with_name(f"{stem}_predictions.csv"), self.predictions())


def read_per_image(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(image ids, errors (N, K) mm, landmark names)`` from a per-image CSV of :meth:`Evaluation.write`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"per-image errors not found: {path} (run the evaluate stage)")
    df = pd.read_csv(path, dtype={"image_id": str})
    names = [c for c in df.columns if c not in ("image_id", "mre_mm")]
    errors = df[names].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(errors)):
        raise ValueError(f"{path} contains NaN or missing errors")
    return df["image_id"].to_numpy(), errors, names


def write_csv(path: str | Path, df: pd.DataFrame, float_format: str = "%.4f") -> Path:
    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False, float_format=float_format))


def load_ensemble(
    spec: ReaderSpec, more: Sequence[str | Path] = (), batch_size: int = 8
) -> list[LandmarkReader]:
    """The readers of an ensemble: ``spec``'s, and one per coarse network in ``more`` with the
    same decoding (the refiner is loaded once, with ``spec``'s: it runs after the average)."""
    first = load_reader(spec, batch_size)
    rest = [load_reader(dataclasses.replace(spec, model=m, refiner=None), batch_size) for m in more]
    return [first, *rest]


def evaluate_variants(
    readers: LandmarkReader | Sequence[LandmarkReader],
    data: PreparedSet,
    thresholds_mm: Sequence[float],
    fine: FineSet | None = None,
    progress: str | None = None,
) -> dict[str, Evaluation]:
    """Evaluate a reader (:func:`mahtnet.decoding.recipe.load_reader`), or an ensemble
    (:func:`load_ensemble`: landmarks averaged in original px), in each of its variants:
    ``coarse`` (arg-max; with TTA when set), ``shape`` (shape-consistent peaks) and ``refined``
    (the first reader's refiner on the previous variant's average, on ``fine``: the split at
    the refiner's resolution). ``progress``: the label of a progress bar on stderr (one step
    per image and pass; shown on a terminal only), none without it."""
    readers = [readers] if isinstance(readers, LandmarkReader) else list(readers)
    if not readers:
        raise ValueError("no checkpoint to evaluate")
    cards = [r.backend.card for r in readers]
    for card in cards:
        if tuple(data.images.shape[1:]) != card.input_size:
            raise ValueError(
                f"prepared images are {data.images.shape[1:]} but checkpoint {card.file} expects "
                f"{card.input_size}; re-run preprocess with the checkpoint's input size"
            )
        if card.landmark_names != cards[0].landmark_names:
            raise ValueError(f"checkpoint {card.file} predicts other landmarks than {cards[0].file}")
    names = list(cards[0].landmark_names)
    refiner = readers[0].refiner
    if refiner is not None and (fine is None or list(fine.ids) != list(data.ids)):
        raise ValueError("the refiner needs the fine-resolution images of the evaluated split (prepare_fine)")
    passes = len(readers) + (refiner is not None)
    with tqdm(
        total=passes * len(data), desc=progress, unit="image", leave=False, disable=None if progress else True
    ) as bar:
        runs = [coarse_in_batches(r, data, bar) for r in readers]
        conf = np.mean([c for _, c in runs], axis=0)
        out: dict[str, Evaluation] = {}
        for variant in runs[0][0]:
            pred = np.mean([landmarks[variant] for landmarks, _ in runs], axis=0)
            out[variant] = make_evaluation(data, pred, conf, names, thresholds_mm)
        if refiner is not None:
            pred, refined_conf = refine_in_batches(readers[0], fine, out[list(out)[-1]].pred, bar)
            out["refined"] = make_evaluation(data, pred, refined_conf, names, thresholds_mm)
    return out


def coarse_in_batches(reader: LandmarkReader, data: PreparedSet, bar: tqdm) -> tuple[dict, np.ndarray]:
    """``reader.coarse`` on ``data``, one of its batches at a time (the same forward passes as
    on the whole split, so the same numbers), advancing ``bar`` by each batch's images."""
    parts, step = [], max(1, reader.batch_size)
    for start in range(0, len(data), step):
        rows = range(start, min(start + step, len(data)))
        boxes = [data.letterbox(i) for i in rows]
        parts.append(
            reader.coarse(
                data.images[rows.start : rows.stop], boxes, list(data.spacing[rows.start : rows.stop])
            )
        )
        bar.update(len(rows))
    if len(parts) <= 1:  # one batch, or none (the reader says what is wrong with an empty split)
        return parts[0] if parts else reader.coarse(data.images, [], [])
    landmarks = {v: np.concatenate([p[0][v] for p in parts]) for v in parts[0][0]}
    return landmarks, np.concatenate([p[1] for p in parts])


def refine_in_batches(
    reader: LandmarkReader, fine: FineSet, points_orig: np.ndarray, bar: tqdm
) -> tuple[np.ndarray, np.ndarray]:
    """``reader.refine`` on ``fine``, ``refine_batch_size`` images at a time (the same patch
    batches as on the whole split, so the same numbers), advancing ``bar`` by each chunk's images."""
    step = max(1, reader.refine_batch_size)
    if len(fine) <= step:
        out = reader.refine(fine, points_orig)
        bar.update(len(fine))
        return out
    points, conf = [], []
    for start in range(0, len(fine), step):
        rows = np.arange(start, min(start + step, len(fine)))
        p, c = reader.refine(fine.subset(rows), points_orig[rows])
        points.append(p)
        conf.append(c)
        bar.update(len(rows))
    return np.concatenate(points), np.concatenate(conf)


def make_evaluation(
    data: PreparedSet, pred: np.ndarray, conf: np.ndarray, names, thresholds_mm
) -> Evaluation:
    errors = metrics.radial_errors_mm(pred, data.official_orig, data.spacing)
    return Evaluation(
        ids=data.ids,
        pred=pred,
        gt=data.official_orig,
        errors_mm=errors,
        spacing=data.spacing,
        confidence=conf,
        landmark_names=names,
        thresholds_mm=list(thresholds_mm),
        data=data,
    )


def evaluate(
    checkpoints: str | Path | Sequence[str | Path],
    data: PreparedSet,
    thresholds_mm: Sequence[float],
    device: str = "auto",
    batch_size: int = 8,
) -> Evaluation:
    """Evaluate a checkpoint, or an ensemble of checkpoints (their landmark predictions are
    averaged in original-image pixels, their confidences averaged) on ``data`` (arg-max)."""
    paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    if not paths:
        raise ValueError("no checkpoint to evaluate")
    readers = load_ensemble(ReaderSpec(paths[0], device=device), paths[1:], batch_size)
    return evaluate_variants(readers, data, thresholds_mm)["coarse"]
