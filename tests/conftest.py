import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # one torch / OpenMP thread per xdist worker and in the processes it starts (set before torch
    # is imported): two workers of two threads each on two cores wait for each other's threads
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """``scripts/<name>.py`` as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ISBI_ROOT = REPO.parent / "shared" / "datasets" / "isbi2015"


PIPELINE_FILES = ("test_pipeline.py", "test_pipeline_commands.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tiny pipeline's files first (test_pipeline.py's session fixture builds it, one chain of
    about 30 processes; then the commands against it), then the other ``slow`` files, then the
    rest; a stable sort, so each file's tests keep their order."""
    order = {name: rank for rank, name in enumerate(PIPELINE_FILES)}
    rank = lambda item: order.get(item.path.name, 4 if item.get_closest_marker("slow") is None else 3)
    items.sort(key=rank)


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the tiny pipeline's two files as one unit of work: one worker
    builds the pipeline and runs the commands against it while the other works through every other
    file. (As two units, the commands came last, about 150 s on one worker with the other idle.)"""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class PipelineAsOneUnit(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return "tiny pipeline" if Path(path).name in PIPELINE_FILES else path

    return PipelineAsOneUnit(config, log)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, worker_id) -> Path:
    """The tiny DVC pipeline (tests/tiny_pipeline.py), built once per session: under xdist the
    first worker to ask builds it in the workers' shared temporary folder while a file lock makes
    the other wait; a failed build fails the other worker's tests too, without a rebuild."""
    from filelock import FileLock
    from tiny_pipeline import build

    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent
    tmp, failed = root / "pipeline", root / "pipeline.failed"
    with FileLock(root / "pipeline.lock"):
        if failed.is_file():
            pytest.fail(f"the tiny pipeline failed to build: {failed.read_text()}")
        if not tmp.is_dir():
            try:
                build(tmp)
            except BaseException as e:
                failed.write_text(str(e)[-6000:])
                raise
    return tmp / "repo"


def isbi_review_folder(folder: Path, n: int = 3) -> Path:
    """``n`` ISBI training images copied into ``folder`` as ``c0.jpg``, ``c1.jpg``...: a review
    folder of real X-rays (the test is skipped without the dataset)."""
    if not (ISBI_ROOT / "RawImage").is_dir():
        pytest.skip(f"ISBI 2015 data not present at {ISBI_ROOT}")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shutil.copy(ISBI_ROOT / "RawImage" / "TrainingData" / f"{i + 1:03d}.jpg", folder / f"c{i}.jpg")
    return folder


@pytest.fixture
def isbi_root() -> Path:
    if not (ISBI_ROOT / "RawImage").is_dir():
        pytest.skip(f"ISBI 2015 data not present at {ISBI_ROOT}")
    return ISBI_ROOT


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and inputs: one torch thread is faster than two that wait for each other (and
    for a busy CPU). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def params_raw() -> dict:
    import yaml

    return yaml.safe_load((REPO / "params.yaml").read_text())


DELETE = object()


def edited(raw: dict, key: str, value=DELETE) -> dict:
    """A deep copy of parsed ``params.yaml`` with the dotted ``key`` set to ``value``
    (or removed when no value is given)."""
    import copy

    out = copy.deepcopy(raw)
    *parents, last = key.split(".")
    section = out
    for name in parents:
        section = section[name]
    if value is DELETE:
        del section[last]
    else:
        section[last] = value
    return out


def write_dicom(path, raw: np.ndarray, photometric="MONOCHROME2", **tags) -> None:
    """Uncompressed 16-bit single-frame DICOM; ``tags`` (e.g. PixelSpacing) are set as given."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = raw.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = raw.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def tiny_unet_checkpoint(path, input_size=(32, 32), params=None, seed=0):
    """A saved, untrained 4-channel U-Net checkpoint with the 19 ISBI landmarks (weights drawn
    with ``seed``)."""
    import torch

    from mahtnet.landmarks import LANDMARK_NAMES
    from mahtnet.models.card import CheckpointCard
    from mahtnet.models.checkpoint import save_checkpoint
    from mahtnet.models.unet import UNet

    torch.manual_seed(seed)
    meta = {
        "model": {"name": "unet", "unet_channels": 4, "unet_depth": 2},
        "input_size": list(input_size),
        "heatmap": {"sigma": 2.0, "stride": 1},
        "output_kind": "logits",
        "landmark_names": list(LANDMARK_NAMES),
    }
    if params is not None:
        meta["params"] = params
    return save_checkpoint(path, UNet(1, len(LANDMARK_NAMES), channels=4, depth=2), CheckpointCard.of(meta))


def tiny_refiner_checkpoint(path, landmark_names=None, seed=1):
    """A saved, untrained refiner checkpoint (4 channels, depth 2, 16 px patches at 0.3 mm/px),
    of the 19 ISBI landmarks unless ``landmark_names`` says otherwise."""
    import torch

    from mahtnet.landmarks import LANDMARK_NAMES
    from mahtnet.models.card import CheckpointCard
    from mahtnet.models.checkpoint import save_checkpoint
    from mahtnet.models.factory import build_refiner

    names = list(LANDMARK_NAMES if landmark_names is None else landmark_names)
    torch.manual_seed(seed)
    meta = {
        "kind": "refiner",
        "model": {"name": "refiner", "channels": 4, "depth": 2},
        "patch_size": 16,
        "sigma": 2.0,
        "spacing_mm": 0.3,
        "landmark_names": names,
    }
    return save_checkpoint(path, build_refiner(len(names), 4, 2), CheckpointCard.of(meta))
