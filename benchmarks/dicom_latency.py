"""What reading a DICOM film adds to a review, from outside the process: ``casereview review`` of a
2,000 x 2,000 16-bit film (MONOCHROME1, window, inverted once) against the same review of a PNG of
the picture it shows (8-bit, 2,000 x 2,000), alternating, ``--repeat`` times each; medians and
their difference. Also the in-process time of ``decode_image`` on the film's bytes, for reference.

The index (``index build --limit 200``) and the input gate are built and fitted once before the timed
runs (kept in ``--workdir`` when given), so both sides time the same warm review.

    python benchmarks/dicom_latency.py [--repeat 5] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dicom_support import film, save  # noqa: E402  (the films the tests write)

SIDE = 2000


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def films(folder: Path) -> tuple[Path, Path]:
    """A 16-bit MONOCHROME1 film of a smooth chest-like picture and a PNG of what it shows."""
    from casereview.config import load_settings
    from casereview.data import decode_image, load_split

    data = load_settings().data
    picture = np.asarray(Image.fromarray(load_split("test", data.root, data.download).images[0]).resize((SIDE, SIDE), Image.Resampling.BICUBIC))
    stored = (65535 - picture.astype(np.uint32) * 257).astype(np.uint16)  # 16 bits, lowest value white
    dcm = save(film(stored, 16, "MONOCHROME1", WindowCenter=32767.5, WindowWidth=65536), folder / "film.dcm")
    png = folder / "film.png"
    Image.fromarray(picture).save(png)
    assert np.abs(decode_image(dcm).image.astype(int) - decode_image(png).image).max() <= 1  # the same picture
    return dcm, png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", help="the workdir (default: a new one); an index is built there with --limit 200 "
                        "when it has none")
    args = parser.parse_args()
    base = [os.path.join(os.path.dirname(sys.executable), "casereview")]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or str(Path(tmp) / "work")
        common = ["--workdir", workdir]
        if not (Path(workdir) / "chroma").is_dir():
            subprocess.run([*base, "index", "build", "--limit", "200", *common], check=True, stdout=subprocess.DEVNULL)
        dcm, png = films(Path(tmp))
        from casereview.data import decode_image

        decode = []
        for _ in range(args.repeat):  # from the file's bytes: a path would hit the cache of films read before
            data = dcm.read_bytes()
            start = time.perf_counter()
            decode_image(data)
            decode.append(time.perf_counter() - start)
        def review(path: Path) -> list[str]:
            return [*base, "review", str(path), "--run-id", uuid.uuid4().hex[:12], "--out", str(Path(tmp) / "out"), *common]

        wall(review(png))  # the gate is fitted and cached here, not in a timed run
        times: dict[str, list[float]] = {"png": [], "dcm": []}
        loads = []
        for _ in range(args.repeat):
            times["png"].append(wall(review(png)))
            times["dcm"].append(wall(review(dcm)))
            loads.append(os.getloadavg()[0])
    for kind, runs in times.items():
        print(f"review film.{kind}: median {statistics.median(runs):.2f} s (runs: {', '.join(f'{r:.2f}' for r in runs)})")
    print(f"DICOM - PNG (medians): {statistics.median(times['dcm']) - statistics.median(times['png']):+.2f} s")
    print(f"decode_image(film.dcm's bytes) in process, pydicom imported: median {statistics.median(decode):.3f} s "
          f"(runs: {', '.join(f'{r:.3f}' for r in decode)})")
    print(f"load average (1 min) during the runs: {min(loads):.2f} to {max(loads):.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
