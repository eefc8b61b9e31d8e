"""Bad and unusual input: every X-ray format read to uint8 gray, truncated or undecodable files
refused, landmarks far outside the image refused, and one-line errors from the command line."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import REPO, write_dicom

from mahtnet.data.images import WINDOW_PERCENTILES, DataError, image_size, is_dicom, read_xray
from mahtnet.data.isbi import list_split, read_image


def noise(h: int = 120, w: int = 100, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w, channels) if channels > 1 else (h, w)
    return cv2.GaussianBlur(rng.integers(0, 256, shape, dtype=np.uint8), (0, 0), 2)


def percentile_window(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values, WINDOW_PERCENTILES)
    return np.clip(np.rint((values - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


@pytest.fixture
def raw16() -> np.ndarray:
    return noise(60, 50).astype(np.uint16) * 200 + 1000  # 1000..52000, not the full 16-bit range


# ---------------------------------------------------------------- raster files


def test_8bit_files_read_as_cv2_grayscale(tmp_path):
    files = {"gray.png": noise(), "colour.png": noise(channels=3), "colour.jpg": noise(channels=3)}
    files |= {"gray.bmp": noise(seed=1), "gray.tif": noise(seed=2), "gray.jpg": noise(seed=3)}
    for name, image in files.items():
        assert cv2.imwrite(str(tmp_path / name), image)
        xray = read_xray(tmp_path / name)
        assert xray.pixels.dtype == np.uint8 and xray.pixels.shape == (120, 100), name
        np.testing.assert_array_equal(xray.pixels, cv2.imread(str(tmp_path / name), cv2.IMREAD_GRAYSCALE))
        assert xray.spacing_mm is None and xray.spacing_source is None  # never a guess
        np.testing.assert_array_equal(read_image(tmp_path / name), xray.pixels)


def test_16bit_png_uses_the_percentile_window(tmp_path, raw16):
    assert cv2.imwrite(str(tmp_path / "a.png"), raw16)
    assert cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    pixels = read_xray(tmp_path / "a.png").pixels
    assert pixels.dtype == np.uint8 and pixels.shape == raw16.shape
    np.testing.assert_array_equal(pixels, percentile_window(raw16.astype(np.float64)))
    assert pixels.min() == 0 and pixels.max() == 255


# ---------------------------------------------------------------- DICOM


def test_dicom_pixels_and_spacing(tmp_path, raw16):
    cases = {
        "pixel.dcm": ({"PixelSpacing": [0.1, 0.1]}, 0.1, "DICOM PixelSpacing"),
        "imager.dcm": ({"ImagerPixelSpacing": [0.12, 0.12]}, 0.12, "DICOM ImagerPixelSpacing"),
        # PixelSpacing wins; 0.5 % apart is isotropic enough: the mean
        "both.dcm": (
            {"PixelSpacing": [0.1, 0.1005], "ImagerPixelSpacing": [0.12, 0.12]},
            0.10025,
            "DICOM PixelSpacing",
        ),
        "none.dcm": ({}, None, None),
    }
    for name, (tags, spacing, source) in cases.items():
        write_dicom(tmp_path / name, raw16, **tags)
        xray = read_xray(tmp_path / name)
        np.testing.assert_array_equal(xray.pixels, percentile_window(raw16.astype(np.float64)))
        assert xray.spacing_mm == (pytest.approx(spacing) if spacing else None)
        assert xray.spacing_source == source and xray.path == tmp_path / name
        assert image_size(tmp_path / name) == (50, 60)


def test_dicom_monochrome1_is_inverted_and_suffix_is_optional(tmp_path, raw16):
    write_dicom(tmp_path / "IM0001", raw16, "MONOCHROME1")  # DICOM files often have no suffix
    assert is_dicom(tmp_path / "IM0001") and not is_dicom(tmp_path / "nothere.png")
    expected = 255 - percentile_window(raw16.astype(np.float64))
    np.testing.assert_array_equal(read_xray(tmp_path / "IM0001").pixels, expected)


def test_dicom_rescale_then_window(tmp_path, raw16):
    raw = (raw16 - 1000) // 50  # 4 * noise: 376..628
    tags = {"RescaleSlope": 2, "RescaleIntercept": -100, "WindowCenter": 900, "WindowWidth": 401}
    write_dicom(tmp_path / "w.dcm", raw, **tags)
    # DICOM PS3.3 C.11.2.1.2.1 LINEAR window on the rescaled values, to 0..255
    x = raw * 2.0 - 100.0
    expected = np.clip(np.rint(((x - 899.5) / 400.0 + 0.5) * 255.0), 0, 255)
    pixels = read_xray(tmp_path / "w.dcm").pixels
    assert np.abs(pixels.astype(int) - expected).max() <= 1
    assert pixels.min() == 0 and pixels.max() == 255  # the window clips both ends of this image


def test_dicom_voi_lut(tmp_path, raw16):
    from pydicom.dataset import Dataset

    raw = raw16 // 16  # 12 bit: 1237..2025
    lut = [round(255 * (i / 4095) ** 0.5) for i in range(4096)]  # a gamma curve, 8-bit output
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 8])  # LUTDescriptor: entries, first input, bits
    item.add_new(0x00283006, "US", lut)  # LUTData
    write_dicom(tmp_path / "lut.dcm", raw, VOILUTSequence=[item], BitsStored=12, HighBit=11)
    np.testing.assert_array_equal(read_xray(tmp_path / "lut.dcm").pixels, np.array(lut)[raw])


def test_dicom_refusals_name_the_file(tmp_path, raw16):
    write_dicom(tmp_path / "aniso.dcm", raw16, PixelSpacing=[0.1, 0.2])
    with pytest.raises(DataError, match=r"aniso\.dcm: anisotropic pixels .*0\.1 mm.*0\.2 mm"):
        read_xray(tmp_path / "aniso.dcm")
    write_dicom(tmp_path / "whole.dcm", raw16, PixelSpacing=[0.1, 0.1])
    data = (tmp_path / "whole.dcm").read_bytes()
    (tmp_path / "short.dcm").write_bytes(data[: int(len(data) * 0.9)])
    with pytest.raises(DataError, match=r"short\.dcm"):
        read_xray(tmp_path / "short.dcm")


# ---------------------------------------------------------------- damaged files


@pytest.mark.parametrize("keep", [2000, 0.5, 0.9, 0.99])
def test_truncated_jpeg_is_refused(tmp_path, keep):
    whole = tmp_path / "whole.jpg"
    assert cv2.imwrite(str(whole), noise(400, 300), [cv2.IMWRITE_JPEG_QUALITY, 95])
    data = whole.read_bytes()
    assert len(data) > 20_000
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    assert cv2.imread(str(cut), cv2.IMREAD_GRAYSCALE) is not None  # what cv2 alone accepts
    with pytest.raises(DataError, match=r"cut\.jpg: truncated or corrupt JPEG"):
        read_image(cut)


def test_truncated_png_is_refused(tmp_path):
    assert cv2.imwrite(str(tmp_path / "whole.png"), noise(400, 300))
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: int(len(data) * 0.9)])
    with pytest.raises(DataError, match=r"cut\.png: cannot decode the PNG data"):
        read_xray(tmp_path / "cut.png")


def test_undecodable_files(tmp_path):
    (tmp_path / "text.jpg").write_text("name,x,y\nsella,1,2\n")
    with pytest.raises(DataError, match=r"text\.jpg: not a JPEG, PNG, BMP, TIFF or DICOM image"):
        read_xray(tmp_path / "text.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: empty file"):
        read_xray(tmp_path / "empty.png")
    assert cv2.imwrite(str(tmp_path / "a.png"), noise())
    os.replace(tmp_path / "a.png", tmp_path / "a.gif")
    with pytest.raises(DataError, match=r"a\.gif: unsupported file type '\.gif'"):
        read_xray(tmp_path / "a.gif")
    with pytest.raises(FileNotFoundError, match=r"nothere\.png: image not found"):
        read_xray(tmp_path / "nothere.png")


# ---------------------------------------------------------------- annotations


def isbi_layout(root, senior_lines: list[str], width: int = 64, height: int = 48):
    """One image (001.png, ``width`` x ``height``), its two doctors' annotation files and the
    official ground truth (the senior's, as on ISBI 001-300)."""
    (root / "RawImage" / "TrainingData").mkdir(parents=True)
    assert cv2.imwrite(str(root / "RawImage" / "TrainingData" / "001.png"), noise(height, width))
    inside = [f"{i},{2 * i}" for i in range(19)]
    for who, lines in (("senior", senior_lines), ("junior", inside), ("challenge", senior_lines)):
        (root / "AnnotationsByMD" / f"400_{who}").mkdir(parents=True)
        (root / "AnnotationsByMD" / f"400_{who}" / "001.txt").write_text("\n".join(lines) + "\n")
    return root


def test_landmark_far_outside_the_image_names_file_and_line(tmp_path):
    lines = [f"{i},{2 * i}" for i in range(19)]
    lines[4] = "-500,-700"  # subspinale; the blank first line makes it line 6 of the file
    root = isbi_layout(tmp_path, ["", *lines])
    with pytest.raises(DataError) as err:
        list_split(root, "TrainingData", "mean")
    ann = root / "AnnotationsByMD" / "400_senior" / "001.txt"
    image = root / "RawImage" / "TrainingData" / "001.png"
    expected = f"{ann}:6: landmark subspinale at (-500, -700) lies outside the 64x48 image {image}"
    assert str(err.value) == f"{expected} (tolerance 1.28 px)"


def test_landmark_one_pixel_outside_is_accepted(tmp_path):
    lines = [f"{i},{2 * i}" for i in range(19)]
    lines[0], lines[1] = "-1,20", "64,47"  # pixel centres run 0..63 x 0..47
    samples = list_split(isbi_layout(tmp_path, lines), "TrainingData", "senior")
    assert len(samples) == 1 and tuple(samples[0].landmarks[1]) == (64, 47)


# ---------------------------------------------------------------- command line

SCRIPT = """
import sys
sys.path.insert(0, {src!r})
from mahtnet.errors import run_cli
from mahtnet.data.images import DataError

def main():
    print(sys.argv[1:])
    raise {error}

if __name__ == "__main__":
    run_cli(main)
"""


def run_script(tmp_path, error: str, *args: str, debug: bool = False) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(src=str(REPO / "src"), error=error))
    env = {k: v for k, v in os.environ.items() if k != "MAHTNET_DEBUG"} | (
        {"MAHTNET_DEBUG": "1"} if debug else {}
    )
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize(
    "error,line",
    [
        ("DataError('a.jpg: truncated')", "error: a.jpg: truncated"),
        ("KeyError(\"unknown ground truth 'x'\")", "error: unknown ground truth 'x'"),
        ("ValueError('line one\\n  line two')", "error: line one line two"),
        ("1 / 0", "error: ZeroDivisionError: division by zero"),
    ],
)
def test_run_cli_prints_one_line_and_exits_2(tmp_path, error, line):
    result = run_script(tmp_path, error, "--x")
    assert result.returncode == 2 and result.stderr == line + "\n" and result.stdout == "['--x']\n"


def test_run_cli_debug_shows_the_traceback(tmp_path):
    for result in (
        run_script(tmp_path, "DataError('bad')", debug=True),
        run_script(tmp_path, "DataError('bad')", "--debug"),
    ):
        assert result.returncode == 1 and result.stdout == "[]\n"  # --debug is removed before main
        assert "Traceback (most recent call last)" in result.stderr and "DataError: bad" in result.stderr


def test_stage_with_bad_params_prints_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("nosuch: 1\n")
    env = {k: v for k, v in os.environ.items() if k != "MAHTNET_DEBUG"}
    cmd = [sys.executable, str(REPO / "stages" / "synthesize.py"), "--out", str(tmp_path / "out")]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: params.yaml: unknown params key 'nosuch'")
