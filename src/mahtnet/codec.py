"""Heatmap codec: landmarks -> Gaussian heatmaps (``encode``) and back (``decode``).

One codec serves target generation, training (re-encoding augmented samples),
evaluation and prediction. Keypoints are in network-input pixels with the project's
convention (``(x, y)``, pixel centres at integers); a heatmap of stride ``s`` has its
pixel ``j`` centred on input position ``(j + 0.5) * s - 0.5``.

Decoding is sub-pixel: the integer argmax is refined by a second-order Taylor expansion
of the log-heatmap (Zhang et al., "Distribution-Aware Coordinate Representation for
Human Pose Estimation", CVPR 2020). The log of a Gaussian is a quadratic, so the
refinement is exact for a Gaussian peak.
"""

from __future__ import annotations

import numpy as np


class HeatmapCodec:
    """Gaussian heatmap codec.

    Args:
        input_size: network input ``(H, W)`` in pixels.
        sigma: Gaussian standard deviation in heatmap pixels.
        stride: input pixels per heatmap pixel.
    """

    def __init__(self, input_size: tuple[int, int], sigma: float, stride: int = 1):
        if sigma <= 0:
            raise ValueError(f"heatmap sigma must be positive, got {sigma}")
        if input_size[0] % stride or input_size[1] % stride:
            raise ValueError(f"input size {input_size} is not divisible by stride {stride}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.sigma = float(sigma)
        self.stride = int(stride)
        self.heatmap_size = (self.input_size[0] // stride, self.input_size[1] // stride)

    @classmethod
    def from_params(cls, preprocess, heatmap, stride: int = 1) -> HeatmapCodec:
        """The codec of ``params.yaml``'s ``preprocess`` (input size) and ``heatmap`` blocks for
        a model whose heatmaps have ``stride`` (its ``output_stride``)."""
        return cls((preprocess.height, preprocess.width), sigma=heatmap.sigma, stride=stride)

    def __repr__(self) -> str:
        return f"HeatmapCodec(input_size={self.input_size}, sigma={self.sigma}, stride={self.stride})"

    def to_heatmap(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, dtype=np.float64) + 0.5) / self.stride - 0.5

    def to_input(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, dtype=np.float64) + 0.5) * self.stride - 0.5

    def encode(self, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints ``(K, 2)`` input px -> heatmaps ``(K, h, w)`` float32 (peak 1 at the
        keypoint) and visibility ``(K,)`` bool (keypoint inside the heatmap)."""
        kp = self.to_heatmap(keypoints)
        if not np.all(np.isfinite(kp)):
            raise ValueError("cannot encode non-finite keypoints")
        h, w = self.heatmap_size
        xs = np.arange(w, dtype=np.float64)
        ys = np.arange(h, dtype=np.float64)
        gx = np.exp(-((xs[None, :] - kp[:, 0:1]) ** 2) / (2 * self.sigma**2))  # (K, w)
        gy = np.exp(-((ys[None, :] - kp[:, 1:2]) ** 2) / (2 * self.sigma**2))  # (K, h)
        heatmaps = (gy[:, :, None] * gx[:, None, :]).astype(np.float32)  # (K, h, w)
        visible = (kp[:, 0] >= 0) & (kp[:, 0] <= w - 1) & (kp[:, 1] >= 0) & (kp[:, 1] <= h - 1)
        return heatmaps, visible

    def decode(self, heatmaps: np.ndarray, is_log: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps ``(..., K, h, w)`` -> keypoints ``(..., K, 2)`` input px and peak
        values ``(..., K)``.

        ``is_log``: the maps are already log-heatmaps (e.g. log-softmax of network logits).
        """
        hm = np.asarray(heatmaps, dtype=np.float64)
        lead = hm.shape[:-2]
        h, w = hm.shape[-2:]
        flat = hm.reshape(-1, h, w)
        logs = flat if is_log else np.log(np.maximum(flat, 1e-10))
        idx = logs.reshape(len(flat), -1).argmax(axis=1)
        py, px = np.divmod(idx, w)
        coords = np.stack([px, py], axis=1).astype(np.float64)
        peak = flat[np.arange(len(flat)), py, px]
        coords += self._taylor_offset(logs, px, py)
        coords = self.to_input(coords)
        return coords.reshape(*lead, 2), peak.reshape(lead)

    @staticmethod
    def _taylor_offset(logs: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
        """Newton step ``-H^-1 g`` of the log-heatmap at the integer peaks ``(M,)``."""
        n, h, w = logs.shape
        offsets = np.zeros((n, 2))
        inner = (px >= 1) & (px <= w - 2) & (py >= 1) & (py <= h - 2)
        if not inner.any():
            return offsets
        i, x, y = np.nonzero(inner)[0], px[inner], py[inner]

        def at(dy: int, dx: int) -> np.ndarray:
            return logs[i, y + dy, x + dx]

        gx = (at(0, 1) - at(0, -1)) / 2
        gy = (at(1, 0) - at(-1, 0)) / 2
        hxx = at(0, 1) - 2 * at(0, 0) + at(0, -1)
        hyy = at(1, 0) - 2 * at(0, 0) + at(-1, 0)
        hxy = (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) / 4
        det = hxx * hyy - hxy**2
        ok = (hxx < 0) & (det > 1e-12)  # negative definite: a real maximum
        safe = np.where(ok, det, 1.0)
        dx = np.where(ok, -(hyy * gx - hxy * gy) / safe, 0.0)
        dy = np.where(ok, -(hxx * gy - hxy * gx) / safe, 0.0)
        offsets[i, 0] = np.clip(dx, -1.0, 1.0)
        offsets[i, 1] = np.clip(dy, -1.0, 1.0)
        return offsets


def encode_set(codec: HeatmapCodec, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Targets ``(N, K, h, w)`` float16 and visibility ``(N, K)`` for ``landmarks (N, K, 2)``."""
    pairs = [codec.encode(points) for points in landmarks]
    return (
        np.stack([hm.astype(np.float16) for hm, _ in pairs]),
        np.stack([vis for _, vis in pairs]),
    )
