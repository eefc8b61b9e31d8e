"""``mahtnet benchmark --release``: the shipped pipeline file -> JSON beside its arg-max path,
written as the section ``release_predict`` of the benchmark file, the other sections kept."""

import json

import pytest
from conftest import ISBI_ROOT

from mahtnet.commands import benchmark

IMAGE = ISBI_ROOT / "RawImage" / "Test1Data" / "151.jpg"


def test_release_section_is_written_and_the_rest_kept(tmp_path, capsys):
    if not IMAGE.is_file():
        pytest.skip(f"ISBI 2015 data not present at {ISBI_ROOT}")
    out = tmp_path / "benchmark.json"
    out.write_text(json.dumps({"end_to_end_predict": {"kept": 1}}))
    benchmark.main(["--release", "--image", str(IMAGE), "--repeats", "1", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["end_to_end_predict"] == {"kept": 1}
    rel = doc["release_predict"]
    assert rel["verdict"] == "ok" and rel["shipped_ms"] > rel["arg_max_ms"] > 0
    assert rel["networks"] == 3 and rel["shipped_ms"] > rel["single_ms"] > rel["arg_max_ms"]  # three seeds
    assert rel["shipped_vs_arg_max"] == pytest.approx(rel["shipped_ms"] / rel["arg_max_ms"])
    assert not rel["image"].startswith("/")  # no path of this machine
    with pytest.raises(SystemExit) as exit_:
        benchmark.main(["--image", str(IMAGE)])
    assert exit_.value.code == 2 and "give --model" in capsys.readouterr().err
