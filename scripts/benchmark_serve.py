"""A bounded load test of ``mahtnet serve``: N requests from C concurrent clients on the loopback
interface, then p50 / p90 / p99 latency, throughput and the error count in a JSON file.

::

    # start a server, measure it, stop it (the default: 200 requests, 4 clients)
    python scripts/benchmark_serve.py --model data/models/maht_net.onnx --workers 2
    # or measure a server that is already running
    python scripts/benchmark_serve.py --url http://127.0.0.1:8000 --requests 50

Every request posts the same image (``--image``; default: a synthetic 384x480 cephalogram made
here) to ``POST /predict``. The run stops by itself: after ``--requests`` requests (plus
``--warmup`` uncounted ones), or at ``--deadline-s`` (the rest are counted as not sent). A
request's latency runs from sending to the last byte of the answer (a fresh connection each
time). The output (default ``metrics/serve.json``) holds relative paths only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server (loopback), e.g. http://127.0.0.1:8000")
    where.add_argument("--model", type=Path, help="start `mahtnet serve --model MODEL` on a free port")
    p.add_argument("--workers", type=int, default=1, help="with --model: the server's --workers")
    p.add_argument("--queue", type=int, default=8, help="with --model: the server's --queue")
    p.add_argument("--threads", type=int, default=0, help="with --model: the server's --threads")
    p.add_argument("--serve-arg", action="append", default=[], help="with --model: one more serve argument")
    p.add_argument("--image", type=Path, help="the X-ray to post (default: a synthetic one)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3, help="uncounted requests first")
    p.add_argument("--timeout-s", type=float, default=120.0, help="per request")
    p.add_argument("--deadline-s", type=float, default=900.0, help="the whole run")
    p.add_argument("--out", type=Path, default=Path("metrics/serve.json"))
    args = p.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1:
        p.error("--requests and --concurrency must be at least 1")
    return args


def relative(path: str | Path) -> str:
    """``path`` relative to the working directory when inside it, else its name only."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return p.name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(
    host: str,
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str | None = None,
    timeout: float = 60.0,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": content_type} if content_type else {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def synthetic_image() -> tuple[bytes, str]:
    import cv2

    from mahtnet.data.synthetic import generate_sample

    image, _ = generate_sample(0, 384, 480, 0.5, 5.0, 0.05, 8.0)
    return cv2.imencode(".png", image)[1].tobytes(), "synthetic 384x480 PNG (mahtnet.data.synthetic, seed 0)"


CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".dcm": "application/dicom",
}


class Server:
    """``python -m mahtnet serve`` on a free loopback port, stopped by :meth:`stop`."""

    def __init__(self, args: argparse.Namespace):
        self.port = free_port()
        fd, name = tempfile.mkstemp(prefix="benchmark-serve-", suffix=".log")
        self.log = os.fdopen(fd, "w+")
        self.log_path = Path(name)
        cmd = [
            sys.executable,
            "-m",
            "mahtnet",
            "serve",
            "--model",
            str(args.model),
            "--port",
            str(self.port),
            "--workers",
            str(args.workers),
            "--queue",
            str(args.queue),
            "--threads",
            str(args.threads),
            "--log-level",
            "warning",
            *args.serve_arg,
        ]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mahtnet serve exited with {self.proc.returncode}: {self.tail()}")
            try:
                if request("127.0.0.1", self.port, "GET", "/health", timeout=5)[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mahtnet serve did not start within 300 s: {self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        return self.log_path.read_text()[-2000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)
        self.log.close()
        self.log_path.unlink(missing_ok=True)


def load(host: str, port: int, path: str, body: bytes, content_type: str, args) -> dict:
    """``args.requests`` requests from ``args.concurrency`` threads; latencies and statuses. On
    a terminal, a progress bar on stderr: one step per answered request."""
    latencies, statuses, lock = [], Counter(), threading.Lock()
    bar = tqdm(total=args.requests, desc="serve load", unit="request", disable=None)
    remaining = [args.requests]
    deadline = time.monotonic() + args.deadline_s

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            t0 = time.perf_counter()
            try:
                status, _ = request(host, port, "POST", path, body, content_type, args.timeout_s)
            except OSError as err:  # refused, reset, timed out
                status = type(err).__name__
            dt = time.perf_counter() - t0
            with lock:
                statuses[str(status)] += 1
                if status == 200:
                    latencies.append(dt)
                bar.update()

    start = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + args.timeout_s + 5)
    elapsed = time.perf_counter() - start
    bar.close()
    ms = np.array(latencies) * 1000.0
    sent = sum(statuses.values())
    pct = lambda q: round(float(np.percentile(ms, q)), 2) if ms.size else None
    return {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "sent": sent,
        "not_sent": args.requests - sent,
        "ok": int(statuses.get("200", 0)),
        "errors": sent - int(statuses.get("200", 0)),
        "status_counts": dict(sorted(statuses.items())),
        "latency_ms": {
            "p50": pct(50),
            "p90": pct(90),
            "p99": pct(99),
            "mean": round(float(ms.mean()), 2) if ms.size else None,
            "max": round(float(ms.max()), 2) if ms.size else None,
        },
        "throughput_rps": round(len(latencies) / elapsed, 3) if elapsed > 0 else None,
        "elapsed_s": round(elapsed, 3),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.image is not None:
        body, image = args.image.read_bytes(), relative(args.image)
        content_type = CONTENT_TYPES.get(args.image.suffix.lower(), "application/octet-stream")
        name = args.image.name
    else:
        (body, image), content_type, name = synthetic_image(), "image/png", "synthetic.png"
    server = Server(args) if args.model is not None else None
    try:
        if server is not None:
            host, port = "127.0.0.1", server.port
        else:
            url = urllib.parse.urlsplit(args.url)
            host, port = url.hostname, url.port or 80
            if host not in ("127.0.0.1", "localhost", "::1"):
                raise SystemExit(f"error: --url {args.url}: loopback only (127.0.0.1, localhost, ::1)")
        path = "/predict?" + urllib.parse.urlencode({"name": name})
        for _ in range(args.warmup):
            request(host, port, "POST", path, body, content_type, args.timeout_s)
        status, info = request(host, port, "GET", "/model", timeout=30)
        if status != 200:
            raise SystemExit(f"error: GET /model answered {status}")
        model = json.loads(info)
        result = load(host, port, path, body, content_type, args)
    finally:
        if server is not None:
            server.stop()
    card = model["model"]
    result = {
        **result,
        "server": {
            "model": relative(card["file"]),
            "architecture": card["architecture"],
            "networks": model["recipe"].get("ensemble_members", 1),  # the release: a points ensemble
            "format": card["format"],
            "input_size": card["input_size"],
            "decoding": {
                k: (None if model[k] is None else relative(model[k])) for k in ("shape_prior", "refiner")
            },
            "workers": model["limits"]["workers"],
            "queue": model["limits"]["queue"],
            "started_here": server is not None,
        },
        "image": image,
        "image_bytes": len(body),
        "warmup": args.warmup,
        "cpus": os.cpu_count(),
    }
    from mahtnet.io import write_json

    write_json(args.out, result)
    lat = result["latency_ms"]
    print(
        f"{result['ok']} of {args.requests} ok, {result['errors']} errors; p50 {lat['p50']} ms, "
        f"p99 {lat['p99']} ms, {result['throughput_rps']} requests/s -> {args.out}"
    )
    return 0 if result["errors"] == 0 and result["not_sent"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
