"""One reader for any X-ray file: JPEG, PNG, BMP, TIFF (8 or 16 bit, gray or colour) and DICOM.

Every image becomes what the network reads, a ``(H, W)`` uint8 grayscale array:

* 8-bit raster files are decoded by ``cv2.imread`` exactly as ``IMREAD_GRAYSCALE`` does (colour
  to gray included), so the pipeline's cached preprocessed data does not change.
* Wider raster data (16-bit PNG/TIFF, float TIFF) and DICOM without a VOI transform get a linear
  window from the :data:`WINDOW_PERCENTILES` (0.5th and 99.5th percentile of the image) to 0..255,
  values outside clipped: a few dead, hot or collimator pixels cannot squeeze the anatomy into a
  handful of gray levels the way a min..max window lets them.
* DICOM: the modality LUT (RescaleSlope/Intercept or a Modality LUT Sequence), then the first
  VOI LUT or else the first WindowCenter/WindowWidth, whose full output range maps linearly to
  0..255; MONOCHROME1 is inverted, RGB/YBR made gray. The pixel spacing comes from PixelSpacing,
  else ImagerPixelSpacing (the mean of row and column); anisotropic pixels (row and column
  spacing more than :data:`ANISOTROPY_TOLERANCE` of the larger apart) are refused.

A file is refused (:class:`DataError`, the message starts with the path) when it is empty, its
suffix is none of :data:`XRAY_SUFFIXES` (a DICOM file, known by its ``DICM`` magic, may have any
name), its content is none of these formats, or it is truncated. libjpeg pads a short JPEG with
gray and ``cv2.imread`` accepts it, so JPEGs are first decoded by Pillow at 1/8 scale (libjpeg's
DCT scaling still entropy-decodes every scan, so a short file raises; it costs less than the full
decode). libpng, libtiff and OpenCV's BMP reader fail by themselves on a short file (checked at
2,000 bytes and 50, 90, 99 and 99.9 % of the file), so they need no extra check. The truncation
check relies on Pillow's default ``ImageFile.LOAD_TRUNCATED_IMAGES = False``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

XRAY_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
DICOM_SUFFIXES = (".dcm", ".dicom")
WINDOW_PERCENTILES = (0.5, 99.5)  # the linear window of data wider than 8 bit without a VOI transform
ANISOTROPY_TOLERANCE = 0.01  # row and column spacing may differ by this fraction of the larger one
_MAGIC = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "BMP": (b"BM",),
    "TIFF": (b"II*\x00", b"MM\x00*"),
}
_EXIF_ORIENTATION = 0x0112  # values 5..8 turn the image by 90 degrees (cv2.imread applies it)


class DataError(ValueError):
    """Bad input data; the message names the file."""


@dataclasses.dataclass(frozen=True)
class XRay:
    pixels: np.ndarray  # (H, W) uint8 grayscale, what the network reads
    spacing_mm: float | None  # mm per pixel, None when the file does not say
    spacing_source: str | None  # e.g. "DICOM PixelSpacing"; None when unknown
    path: Path


def is_dicom(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM file: a ``.dcm``/``.dicom`` suffix or ``DICM`` at byte 128."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _file_kind(path: Path) -> str:
    """``"DICOM"``, ``"JPEG"``, ``"PNG"``, ``"BMP"`` or ``"TIFF"``, from the suffix and first bytes."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image not found")
    with open(path, "rb") as f:
        head = f.read(132)
    if not head:
        raise DataError(f"{path}: empty file")
    if is_dicom(path):
        return "DICOM"
    if path.suffix.lower() not in XRAY_SUFFIXES:
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (valid: {', '.join(XRAY_SUFFIXES)})")
    for kind, magics in _MAGIC.items():
        if head.startswith(magics):
            return kind
    raise DataError(f"{path}: not a JPEG, PNG, BMP, TIFF or DICOM image (first bytes {head[:8]!r})")


def read_xray(path: str | Path) -> XRay:
    """The image as uint8 grayscale ``(H, W)`` and its pixel spacing where the file states one
    (DICOM only; never a guess). A missing file raises ``FileNotFoundError``, anything that cannot
    be decoded completely :class:`DataError`."""
    path = Path(path)
    kind = _file_kind(path)
    if kind == "DICOM":
        return _read_dicom(path)
    if kind == "JPEG":
        _check_jpeg_complete(path)
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    if image is None or image.size == 0:
        raise DataError(f"{path}: cannot decode the {kind} data (corrupt or truncated file)")
    return XRay(_to_uint8(image, path), None, None, path)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of the image :func:`read_xray` returns, from the file header only (EXIF
    orientation included); errors as :func:`read_xray`, except that a truncated image passes."""
    path = Path(path)
    if _file_kind(path) == "DICOM":
        ds = _dcmread(path, stop_before_pixels=True)
        if "Rows" not in ds or "Columns" not in ds:
            raise DataError(f"{path}: DICOM file without Rows/Columns: not an image")
        return int(ds.Columns), int(ds.Rows)
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception as err:  # Pillow raises many types for damaged files
        raise DataError(f"{path}: cannot read the image header ({err})") from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _check_jpeg_complete(path: Path) -> None:
    """Decode at 1/8 scale with Pillow, which raises on a short or damaged entropy-coded stream."""
    try:
        with Image.open(path) as im:
            im.draft("L", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ...
        raise DataError(f"{path}: truncated or corrupt JPEG ({err})") from None


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``lo..hi`` linearly to 0..255, rounded, values outside clipped."""
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    out = (values.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _to_uint8(values: np.ndarray, path: Path) -> np.ndarray:
    """uint8 as is; any other type through the :data:`WINDOW_PERCENTILES` window (min..max if
    that window is empty, all 0 for a constant image)."""
    if values.dtype == np.uint8:
        return values
    if not np.isfinite(values).all():
        raise DataError(f"{path}: non-finite pixel values")
    lo, hi = np.percentile(values, WINDOW_PERCENTILES)
    if hi <= lo:
        lo, hi = values.min(), values.max()
    return _scale(values, float(lo), float(hi))


def _dcmread(path: Path, stop_before_pixels: bool = False):
    import pydicom  # here: only DICOM input needs it

    try:
        return pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
    except Exception as err:  # pydicom raises many types for damaged files
        raise DataError(f"{path}: not a readable DICOM file ({err})") from None


def _read_dicom(path: Path) -> XRay:
    ds = _dcmread(path)
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM file without pixel data: not an image")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise DataError(f"{path}: multi-frame DICOM ({frames} frames) is not supported")
    spacing, source = _dicom_spacing(ds, path)
    try:
        pixels = _dicom_gray(ds, path)
    except DataError:
        raise
    except Exception as err:  # missing codec, damaged or short pixel data, bad LUT, ...
        raise DataError(f"{path}: cannot decode the DICOM pixel data ({err})") from None
    return XRay(pixels, spacing, source, path)


def _dicom_gray(ds, path: Path) -> np.ndarray:
    """Pixel data through the modality and VOI transforms to uint8, MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"):  # pydicom gives RGB
        rgb = ds.pixel_array
        if rgb.dtype not in (np.uint8, np.uint16):
            rgb = rgb.astype(np.float32)
        return _to_uint8(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), path)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(f"{path}: DICOM PhotometricInterpretation {photometric!r} is not supported")
    gray = _dicom_voi(apply_modality_lut(ds.pixel_array, ds), ds, path)
    return 255 - gray if photometric == "MONOCHROME1" else gray


def _dicom_voi(values: np.ndarray, ds, path: Path) -> np.ndarray:
    """The VOI LUT Sequence, else WindowCenter/Width, its output range to 0..255; neither:
    :func:`_to_uint8`."""
    from pydicom.pixels import apply_windowing

    item = ds.VOILUTSequence[0] if ds.get("VOILUTSequence") else None
    if item is not None and "LUTDescriptor" in item and "LUTData" in item:
        return _apply_voi_lut(values, item)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        with np.errstate(over="ignore"):  # the sigmoid function at +-1e30
            lo, hi = apply_windowing(np.array([-1e30, 1e30]), ds)  # the window's output range
        return _scale(apply_windowing(values, ds), float(lo), float(hi))
    return _to_uint8(values, path)


def _apply_voi_lut(values: np.ndarray, item) -> np.ndarray:
    """One VOI LUT (PS3.3 C.11.2.1.1) to 0..255. Not pydicom 3.0's ``apply_voi``: it indexes an
    8-bit LUT through a uint8 array, so every input past 255 wraps around."""
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    data = item.LUTData  # OW (bytes, 16 bits an entry) or US (numbers)
    lut = np.frombuffer(data, "<u2") if isinstance(data, bytes) else np.asarray(data, np.int64)
    index = np.clip(np.rint(values).astype(np.int64) - first, 0, (entries or 65536) - 1)
    return _scale(lut[index], 0.0, 2.0**bits - 1)


def _dicom_spacing(ds, path: Path) -> tuple[float | None, str | None]:
    """Mean of the row and column spacing (mm) of PixelSpacing, else ImagerPixelSpacing."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is None or (hasattr(value, "__len__") and len(value) == 0):  # absent or empty
            continue
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            raise DataError(f"{path}: DICOM {keyword} {value!r} is not two numbers (row, column)") from None
        if not (np.isfinite([row, col]).all() and row > 0 and col > 0):
            raise DataError(f"{path}: DICOM {keyword} ({row}, {col}) must be positive")
        if abs(row - col) > ANISOTROPY_TOLERANCE * max(row, col):
            raise DataError(
                f"{path}: anisotropic pixels (DICOM {keyword} row {row} mm, column {col} mm) are not "
                f"supported"
            )
        return (row + col) / 2.0, f"DICOM {keyword}"
    return None, None
