"""What reading a DICOM film adds to a review, from outside the process: ``casereview review`` of a
2,000 x 2,000 16-bit film (MONOCHROME1, window, inverted once) against the same review of a PNG of
the picture it shows (8-bit, 2,000 x 2,000), alternating, ``--repeat`` times each; medians and
their difference. Then the same for a process that only decodes the file (``python -c`` importing
``casereview.data`` and calling ``decode_image``, pydicom imported lazily for the film): the review's
other seconds vary by more than the decode on a shared machine. Also, for reference, the in-process
time of ``decode_image`` on the film's bytes and that of importing ``casereview.dicom`` (pydicom) in a
process that has already imported the review's modules, as a review of a film does.

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
    image = load_split("test", data.root, data.download).images[0]
    picture = np.asarray(Image.fromarray(image).resize((SIDE, SIDE), Image.Resampling.BICUBIC))
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

        in_process = []
        for _ in range(args.repeat):  # from the file's bytes: a path would hit the cache of films read before
            data = dcm.read_bytes()
            start = time.perf_counter()
            decode_image(data)
            in_process.append(time.perf_counter() - start)
        def review(path: Path) -> list[str]:  # a folder per run: a record file belongs to the run that wrote it
            run_id = uuid.uuid4().hex[:12]
            return [*base, "review", str(path), "--run-id", run_id, "--out", str(Path(tmp) / "out" / run_id), *common]

        wall(review(png))  # the gate is fitted and cached here, not in a timed run
        def decode(path: Path) -> list[str]:
            return [sys.executable, "-c", "import sys; from casereview.data import decode_image; decode_image(sys.argv[1])", str(path)]

        times: dict[str, list[float]] = {"review film.png": [], "review film.dcm": [], "decode film.png": [], "decode film.dcm": []}
        loads = []
        for _ in range(args.repeat):
            for kind, path in (("png", png), ("dcm", dcm)):
                times[f"review film.{kind}"].append(wall(review(path)))
                times[f"decode film.{kind}"].append(wall(decode(path)))
            loads.append(os.getloadavg()[0])
    for what, runs in times.items():
        print(f"{what}: median {statistics.median(runs):.2f} s (runs: {', '.join(f'{r:.2f}' for r in runs)})")
    timed_import = ("import time, casereview.graphs.graph, casereview.tools.context; start = time.perf_counter(); "
                    "import casereview.dicom; print(time.perf_counter() - start)")
    imports = [float(subprocess.run([sys.executable, "-c", timed_import], check=True, capture_output=True, text=True).stdout)
               for _ in range(args.repeat)]
    for what in ("review", "decode"):
        medians = [statistics.median(times[f"{what} film.{kind}"]) for kind in ("dcm", "png")]
        print(f"{what}: DICOM - PNG (medians): {medians[0] - medians[1]:+.2f} s")
    print(f"decode_image(film.dcm's bytes) in process, pydicom imported: median {statistics.median(in_process):.3f} s "
          f"(runs: {', '.join(f'{r:.3f}' for r in in_process)})")
    print(f"import casereview.dicom after the review's modules: median {statistics.median(imports):.3f} s "
          f"(runs: {', '.join(f'{r:.3f}' for r in imports)})")
    print(f"load average (1 min) during the runs: {min(loads):.2f} to {max(loads):.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
