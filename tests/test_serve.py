"""``mahtnet serve``: the real command as a subprocess on a loopback port, with a tiny untrained
U-Net and synthetic images written here (what is checked is the service, not accuracy): its
predictions are ``mahtnet predict``'s, bad requests get a 4xx with a one-line reason and the
server goes on, the review endpoints save and read back corrections; the worker pool's 503 and
504 with a slow stand-in model on an in-process uvicorn."""

import base64
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import tiny_unet_checkpoint, write_dicom

from mahtnet.data.isbi import read_annotation
from mahtnet.landmarks import LANDMARK_NAMES
from mahtnet.models.card import sha256
from mahtnet.serve import load_corrections

pytestmark = pytest.mark.slow
K = len(LANDMARK_NAMES)
MAX_UPLOAD_MB = 0.05  # 52428 bytes: the test images are a few kB
LIMIT = int(MAX_UPLOAD_MB * (1 << 20))
MAX_PIXELS = 1_000_000
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
START_TIMEOUT_S = 180  # importing torch on a busy 2-core machine


def xray(seed: int, h: int = 120, w: int = 100) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 255, (h, w), dtype=np.uint8), (0, 0), 3)
    return cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Reply:
    def __init__(self, status: int, headers: dict, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str | None = None,
    timeout: float = 120,
) -> Reply:
    """One request on a fresh loopback connection (http.client: no proxy, raw status codes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {} if content_type is None else {"Content-Type": content_type}
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def post_json(port: int, path: str, obj) -> Reply:
    return call(port, "POST", path, json.dumps(obj).encode(), "application/json")


def wait_until_up(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mahtnet serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if call(port, "GET", "/health", timeout=5).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"mahtnet serve did not answer within {START_TIMEOUT_S} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny checkpoint, images in four formats, and a review folder with one image and its
    ``mahtnet predict`` output."""
    root = tmp_path_factory.mktemp("serve")
    data = {
        "dataset": "synthetic",
        "root": "data/synthetic",
        "train_split": "T",
        "gt": "mean",
        "val_fraction": 0.1,
    }
    model = tiny_unet_checkpoint(root / "unet.pt", (64, 48), {"data": data})
    images = root / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), xray(1))
    cv2.imwrite(str(images / "j.jpg"), xray(2))
    cv2.imwrite(str(images / "t.tif"), xray(3).astype(np.uint16) * 257)  # 16 bit
    write_dicom(images / "d.dcm", xray(4).astype(np.uint16) * 257, PixelSpacing=[0.1, 0.1])
    review = root / "review"
    review.mkdir()
    cv2.imwrite(str(review / "r.png"), xray(5))
    return {"root": root, "model": model, "images": images, "review": review}


def mahtnet(*args) -> list[str]:
    """The command line ``python -m mahtnet ARGS`` (paths and numbers as strings)."""
    return [sys.executable, "-m", "mahtnet", *map(str, args)]


def predict_cli(model: Path, inputs: list[Path], out: Path, *extra: str) -> None:
    cmd = mahtnet("predict", *inputs, "--model", model, "--out", out, "--device", "cpu", *extra)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def predicted(files):
    """``mahtnet predict``'s outputs for the images, and for the review folder (written into it)."""
    out = files["root"] / "predict"
    images = sorted(files["images"].iterdir())
    predict_cli(files["model"], images, out)
    predict_cli(files["model"], [files["review"] / "r.png"], files["review"], "--no-overlay")
    return out


@contextlib.contextmanager
def serving(log: Path, model: Path | None, *options):
    """``python -m mahtnet serve --model MODEL OPTIONS`` (None: the released model) on a free
    loopback port, always stopped at the end; its log must hold no traceback (every error was a
    one-line answer)."""
    port = free_port()
    chosen = [] if model is None else ["--model", model]
    cmd = mahtnet("serve", *chosen, "--device", "cpu", "--port", port, *options)
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=ENV)
    try:
        wait_until_up(port, proc, log)
        yield {"port": port, "url": f"http://127.0.0.1:{port}", "log": log, "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="module")
def server(files, predicted):
    limits = ["--max-upload-mb", MAX_UPLOAD_MB, "--max-pixels", MAX_PIXELS, "--timeout-s", 120]
    with serving(files["root"] / "serve.log", files["model"], *limits, "--review-dir", files["review"]) as s:
        yield s


def predict_upload(port: int, path: Path, content_type: str, query: str = "") -> Reply:
    q = urllib.parse.urlencode({"name": path.name}) + (f"&{query}" if query else "")
    return call(port, "POST", f"/predict?{q}", path.read_bytes(), content_type)


def assert_good_prediction(port: int, files) -> None:
    r = predict_upload(port, files["images"] / "a.png", "image/png")
    assert r.status == 200, r.body
    assert len(r.json()["landmarks"]) == K


def test_health_model_and_docs(server, files):
    port = server["port"]
    health = call(port, "GET", "/health").json()
    assert health["status"] == "ok" and health["model_sha256"] == sha256(files["model"])
    info = call(port, "GET", "/model").json()
    assert info["model"]["file"] == files["model"].name and info["model"]["format"] == "pytorch"
    assert info["recipe"]["name"] == "unet.pt"
    assert str(files["root"]) not in json.dumps(info)  # no path of this machine
    assert info["model"]["input_size"] == [64, 48] and info["landmark_names"] == list(LANDMARK_NAMES)
    assert info["limits"]["max_upload_bytes"] == LIMIT and info["limits"]["max_pixels"] == MAX_PIXELS
    assert info["shape_prior"] is None and info["refiner"] is None and info["pixel_spacing_mm"] is None
    docs = call(port, "GET", "/docs")
    assert docs.status == 200 and b"/docs-static/swagger-ui-bundle.js" in docs.body  # served here, no CDN
    assert call(port, "GET", "/docs-static/swagger-ui-bundle.js").status == 200
    schema = call(port, "GET", "/openapi.json").json()
    assert {"/predict", "/health", "/model", "/measurements", "/export"} <= set(schema["paths"])


@pytest.mark.parametrize(
    "name, content_type",
    [
        ("a.png", "image/png"),
        ("j.jpg", "image/jpeg"),
        ("t.tif", "image/tiff"),
        ("d.dcm", "application/dicom"),
    ],
)
def test_prediction_is_the_predict_json(server, files, predicted, name, content_type):
    r = predict_upload(server["port"], files["images"] / name, content_type)
    assert r.status == 200, r.body
    got = r.json()
    want = json.loads((predicted / f"{Path(name).stem}.json").read_text())
    assert got["image"] == name and want["image"] == str(files["images"] / name)
    assert {**got, "image": None} == {**want, "image": None}  # bit-equal: the same code path
    if name == "d.dcm":
        assert (
            got["pixel_spacing_mm"] == pytest.approx(0.1) and got["measurements"]["MW"]["value"] is not None
        )


def test_overlay_is_the_predict_picture(server, files, predicted):
    r = predict_upload(
        server["port"], files["images"] / "a.png", "application/octet-stream", "overlay=true&image=true"
    )
    assert r.status == 200, r.body
    doc = r.json()
    decode = lambda b64: cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decode(doc.pop("overlay_png")), cv2.imread(str(predicted / "a.png")))
    np.testing.assert_array_equal(decode(doc.pop("image_png")), xray(1))
    want = json.loads((predicted / "a.json").read_text())
    assert {**doc, "image": None} == {**want, "image": None}


def noise_png(h: int, w: int) -> bytes:
    ok, data = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (h, w), dtype=np.uint8))
    return data.tobytes()


def bad_requests(files) -> list[tuple]:
    jpeg = (files["images"] / "j.jpg").read_bytes()
    png = (files["images"] / "a.png").read_bytes()
    oversized = noise_png(800, 800)
    assert len(oversized) >= 10 * LIMIT  # an image 10x over the upload limit
    huge = cv2.imencode(".png", np.zeros((1100, 1000), np.uint8))[1].tobytes()  # small file, 1.1 Mpx
    assert len(huge) < LIMIT
    landmarks = [[10.0, 20.0]] * K
    return [
        # (method, path, body, content type, status, words the reason must hold)
        ("POST", "/predict", b"", "image/png", 400, ["empty body"]),
        (
            "POST",
            "/predict?name=notes.jpg",
            b"this is not an image\n",
            "image/jpeg",
            422,
            ["notes.jpg", "not a JPEG"],
        ),
        (
            "POST",
            "/predict?name=cut.jpg",
            jpeg[: len(jpeg) // 2],
            "image/jpeg",
            422,
            ["cut.jpg", "truncated"],
        ),
        ("POST", "/predict?name=big.png", oversized, "image/png", 413, ["--max-upload-mb", str(LIMIT)]),
        ("POST", "/predict?name=huge.png", huge, "image/png", 413, ["huge.png", "1000x1100", "--max-pixels"]),
        ("POST", "/predict", png, "text/plain", 415, ["Content-Type text/plain"]),
        ("POST", "/predict", png, None, 415, ["Content-Type missing"]),
        (
            "POST",
            "/predict",
            png,
            "multipart/form-data; boundary=x",
            415,
            ["multipart/form-data", "raw body"],
        ),
        ("POST", "/predict?name=a.png", png, "image/jpeg", 415, ["a.png", "body is a PNG"]),
        ("POST", "/predict?overlay=maybe", png, "image/png", 422, ["query parameter 'overlay'"]),
        ("GET", "/no/such/route", None, None, 404, ["/no/such/route", "no such route"]),
        ("GET", "/predict", None, None, 405, ["GET /predict", "method not allowed"]),
        ("POST", "/measurements", b'{"landmarks": [[1, 2]]}', "application/json", 422, ["landmarks", "19"]),
        ("POST", "/measurements", b'{"landmarks": ', "application/json", 422, ["invalid JSON"]),
        (
            "POST",
            "/measurements",
            json.dumps({"landmarks": landmarks, "pixel_spacing_mm": -1}).encode(),
            "application/json",
            422,
            ["pixel_spacing_mm"],
        ),
        (
            "POST",
            "/export?format=pdf",
            json.dumps({"landmarks": landmarks}).encode(),
            "application/json",
            422,
            ["query parameter 'format'"],
        ),
        ("GET", "/review/item?id=../images/a.png", None, None, 404, ["../images/a.png", "no such image"]),
        ("POST", "/model/use", b'{"name": "../x"}', "application/json", 404, ["'../x'", "no model named"]),
        ("POST", "/model/use", b'{"name": "unet.pt"}', "application/json", 404, ["no model named"]),
        ("POST", "/model/use", b"{}", "application/json", 422, ["body.name"]),
        ("POST", "/review/adapt", b'{"method": 3}', "application/json", 422, ["body.method"]),
    ]


def test_bad_requests_get_4xx_and_the_server_goes_on(server, files):
    port = server["port"]
    for method, path, body, content_type, status, words in bad_requests(files):
        r = call(port, method, path, body, content_type)
        what = f"{method} {path} ({content_type})"
        assert r.status == status, f"{what}: {r.status} {r.body[:300]!r}"
        assert r.headers["content-type"] == "application/json", what
        doc = r.json()
        assert list(doc) == ["error"] and "\n" not in doc["error"] and "Traceback" not in doc["error"], what
        for word in words:
            assert word in doc["error"], f"{what}: {doc['error']!r} lacks {word!r}"
        assert_good_prediction(port, files)  # the next good request still succeeds
    assert server["proc"].poll() is None


def test_measurements_are_the_predict_ones(server, predicted):
    want = json.loads((predicted / "d.json").read_text())
    points = [[r["x_px"], r["y_px"]] for r in want["landmarks"]]
    r = post_json(server["port"], "/measurements", {"landmarks": points, "pixel_spacing_mm": 0.1})
    assert r.status == 200, r.body
    assert r.json()["measurements"] == want["measurements"]


def test_export_formats(server, files, tmp_path):
    points = (np.arange(2 * K, dtype=float).reshape(K, 2) * 3 + 10.25).tolist()
    body = {"image": "x.png", "landmarks": points, "pixel_spacing_mm": 0.1, "predicted": points}
    port = server["port"]
    txt = call(port, "POST", "/export?format=txt", json.dumps(body).encode(), "application/json")
    assert txt.status == 200 and 'filename="x.png.corrected.txt"' in txt.headers["content-disposition"]
    (tmp_path / "x.txt").write_bytes(txt.body)
    np.testing.assert_array_equal(read_annotation(tmp_path / "x.txt"), np.round(points))  # the ISBI format
    csv = call(port, "POST", "/export?format=csv", json.dumps(body).encode(), "application/json")
    lines = csv.body.decode().splitlines()
    assert lines[0].startswith("image,landmark,x_px,y_px") and len(lines) == K + 1
    doc = call(port, "POST", "/export?format=json", json.dumps(body).encode(), "application/json").json()
    assert [r["x_px"] for r in doc["landmarks"]] == [p[0] for p in points]
    assert not any(r["moved"] for r in doc["landmarks"]) and doc["measurements"]["MW"]["value"] is not None


def test_review_correction_is_saved_next_to_the_image_and_read_back(server, files):
    port, review = server["port"], files["review"]
    prediction_file = review / "r.json"
    before = prediction_file.read_bytes()
    items = call(port, "GET", "/review/items").json()["items"]
    assert items == [{"id": "r.png", "prediction": True, "corrected": False}]
    item = call(port, "GET", "/review/item?id=r.png").json()
    assert item["prediction_source"] == "file" and item["correction"] is None
    image = call(port, "GET", "/review/image?id=r.png")
    assert image.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(
        cv2.imdecode(np.frombuffer(image.body, np.uint8), cv2.IMREAD_UNCHANGED), xray(5)
    )
    predicted = [[r["x_px"], r["y_px"]] for r in item["prediction"]["landmarks"]]
    corrected = [list(p) for p in predicted]
    corrected[4] = [33.5, 44.25]  # subspinale (A point)
    body = {
        "landmarks": corrected,
        "predicted": predicted,
        "pixel_spacing_mm": None,
        "width_px": 100,
        "height_px": 120,
        "model": item["prediction"]["model"],
    }
    r = post_json(port, "/review/correction?id=r.png", body)
    assert r.status == 200, r.body
    assert r.json()["saved"] == ["r.png.corrected.json", "r.png.corrected.txt"]
    assert prediction_file.read_bytes() == before  # the model's prediction is never overwritten
    assert not list(review.glob(".*.tmp"))  # atomic writes leave no temporary files
    loaded = load_corrections(review)
    assert list(loaded) == [review / "r.png"]
    c = loaded[review / "r.png"]
    np.testing.assert_array_equal(c.landmarks, np.array(corrected))
    assert c.moved.tolist() == [k == 4 for k in range(K)]
    np.testing.assert_array_equal(read_annotation(review / "r.png.corrected.txt"), np.round(corrected))
    again = call(port, "GET", "/review/item?id=r.png").json()
    assert again["correction"]["landmarks"] == corrected
    assert call(port, "GET", "/review/items").json()["items"][0]["corrected"] is True


def test_models_of_a_single_file_server(server, files):
    """A checkpoint given by file: served as ``startup`` beside the release, and no adaptation
    from it (an adaptation starts from a model folder); nothing is written for asking."""
    port = server["port"]
    assert call(port, "GET", "/model").json()["serving"] == "startup"
    models = call(port, "GET", "/models").json()
    assert models["current"] == "startup" and [m["name"] for m in models["models"]] == ["startup", "release"]
    assert models["models"][0]["label"] == "unet.pt" and models["models_dir"] == ".mahtnet-models"
    adapt = call(port, "GET", "/review/items").json()["adapt"]
    assert adapt["command"] is None and "single file" in adapt["reason"]
    r = post_json(port, "/model/use", {"name": "startup"})  # the served one: reloaded, still served
    assert r.status == 200 and r.json()["serving"] == "startup", r.body
    assert_good_prediction(port, files)
    assert not (files["review"] / ".mahtnet-models").exists()


def test_onnx_model(files, predicted, tmp_path):
    """The exported model (onnxruntime, no PyTorch): the same JSON as ``mahtnet predict`` on it."""
    from mahtnet.deploy.export import export_onnx

    onnx = export_onnx(files["model"], tmp_path / "unet.onnx")
    predict_cli(onnx, [files["images"] / "j.jpg"], tmp_path / "out", "--no-overlay")
    with serving(tmp_path / "serve.log", onnx) as s:
        assert call(s["port"], "GET", "/model").json()["model"]["format"] == "onnx"
        r = predict_upload(s["port"], files["images"] / "j.jpg", "image/jpeg")
    assert r.status == 200, r.body
    want = json.loads((tmp_path / "out" / "j.json").read_text())
    assert {**r.json(), "image": None} == {**want, "image": None}


# ----- the worker pool: a slow stand-in model on an in-process server ---------------------------


class SlowModel:
    """The service's model interface; ``slow.png`` takes ``delay`` seconds."""

    def __init__(self, delay: float, tag: str | None = None):
        self.delay, self.tag = delay, tag
        self.card = type("Card", (), {"sha256": "0" * 64})()

    def predict_upload(self, data, kind, label, max_pixels, overlay, image, force=False):
        if label == "slow.png":
            time.sleep(self.delay)
        return {"image": label} if self.tag is None else {"image": label, "by": self.tag}


@contextlib.contextmanager
def in_process(app):
    """``app`` on an in-process uvicorn on a free loopback port."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


def test_a_switch_leaves_running_requests_with_their_model(files):
    """``Models.use`` (what ``POST /model/use`` does once the model is loaded) swaps the model for
    the requests that come after; one already running finishes with the model it started with."""
    from mahtnet.serve.app import create_app
    from mahtnet.serve.service import Limits, Models

    limits = Limits(max_upload_bytes=LIMIT, max_pixels=MAX_PIXELS, timeout_s=30.0, workers=2, queue=2)
    models = Models(SlowModel(2.0, "old"))
    png = (files["images"] / "a.png").read_bytes()
    with in_process(create_app(models.current, limits, None, models)) as port:
        results = {}
        slow = threading.Thread(
            target=lambda: results.setdefault(
                "slow", call(port, "POST", "/predict?name=slow.png", png, "image/png")
            )
        )
        slow.start()
        while call(port, "GET", "/health").json()["in_flight"] < 1:
            time.sleep(0.02)
        models.use(SlowModel(0.0, "new"))
        fast = call(port, "POST", "/predict?name=fast.png", png, "image/png")
        slow.join(30)
    assert fast.json() == {"image": "fast.png", "by": "new"}
    assert results["slow"].json() == {"image": "slow.png", "by": "old"}


def test_pool_is_bounded_and_timed(files):
    import uvicorn

    from mahtnet.serve.app import create_app
    from mahtnet.serve.service import Limits

    limits = Limits(max_upload_bytes=LIMIT, max_pixels=MAX_PIXELS, timeout_s=1.0, workers=1, queue=0)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(SlowModel(4.0), limits), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    png = (files["images"] / "a.png").read_bytes()
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        results = {}
        slow = threading.Thread(
            target=lambda: results.setdefault(
                "slow", call(port, "POST", "/predict?name=slow.png", png, "image/png")
            )
        )
        slow.start()
        while call(port, "GET", "/health").json()["in_flight"] < 1:
            time.sleep(0.02)
        busy = call(port, "POST", "/predict?name=fast.png", png, "image/png")
        assert busy.status == 503 and "busy" in busy.json()["error"] and busy.headers["retry-after"] == "1"
        slow.join(30)
        assert results["slow"].status == 504 and "--timeout-s 1" in results["slow"].json()["error"]
        # the timed-out job still runs: its slot is held until it ends, then freed
        assert call(port, "GET", "/health").json()["in_flight"] == 1
        while call(port, "GET", "/health").json()["in_flight"] > 0:
            time.sleep(0.05)
        ok = call(port, "POST", "/predict?name=fast.png", png, "image/png")
        assert ok.status == 200 and ok.json() == {"image": "fast.png"}
    finally:
        server.should_exit = True
        thread.join(30)
