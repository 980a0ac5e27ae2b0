"""Does the input gate catch a film read without its MONOCHROME1 inversion (what a naive reader
produces), and does it leave correctly read films alone?

For ``--n`` test images (a fixed random subset), each enlarged ``--scale`` times (default 8: 224 x 224 px,
so the resize views count too): a MONOCHROME1 12-bit
film with a window (tests/dicom_support.py), read three ways through ``decode_image``:
- correctly (window, then inverted once);
- naively: the same file with its header saying MONOCHROME2 and no Presentation LUT Shape, so the
  window is applied and the inversion is not;
- its PNG twin (the 224 px picture as an 8-bit PNG).
Each image goes through the gate as the review's ``check_input`` node does (released classifier,
its fitted gate). Prints how many of each are flagged.

    python benchmarks/dicom_gate.py [--n 50] [--scale 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dicom_support import monochrome1_12bit_window, save  # noqa: E402  (the films the tests write)

from casereview.agents.gate import input_decision  # noqa: E402
from casereview.config import load_settings  # noqa: E402
from casereview.data import decode_image, load_split, subset_indices  # noqa: E402
from casereview.tools.case_classifier import load_case_classifier  # noqa: E402
from casereview.tools.input_gate import load_input_gate  # noqa: E402



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--scale", type=int, default=8)
    args = parser.parse_args()
    settings = load_settings()
    classifier = load_case_classifier(settings)
    gate = load_input_gate(settings, classifier.clf)
    test = load_split("test", settings.data.root, settings.data.download)
    rows = subset_indices(len(test), args.n)
    flagged = {"correct": 0, "naive (not inverted)": 0, "PNG twin": 0}
    missed = []  # naive reads the gate let through
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            picture = np.kron(test.images[row], np.ones((args.scale, args.scale), np.uint8))
            ds = monochrome1_12bit_window(picture)
            correct = save(ds, Path(tmp) / "film.dcm")
            read = {"correct": decode_image(correct)}
            ds.PhotometricInterpretation = "MONOCHROME2"
            del ds.PresentationLUTShape
            read["naive (not inverted)"] = decode_image(save(ds, Path(tmp) / "naive.dcm"))
            Image.fromarray(picture).save(Path(tmp) / "twin.png")
            read["PNG twin"] = decode_image(Path(tmp) / "twin.png")
            assert np.array_equal(read["correct"].image, read["PNG twin"].image)
            for kind, decoded in read.items():
                _, embedding = classifier.analyse_one(decoded.image)
                check = input_decision(gate.measure(decoded.image, decoded.views, embedding))
                flagged[kind] += check.flagged
                if kind.startswith("naive") and not check.flagged:
                    missed.append(f"test:{row}")
    side = 28 * args.scale
    print(f"{len(rows)} test films (fixed random subset), {side} x {side} px, MONOCHROME1 12-bit with a window:")
    for kind, count in flagged.items():
        print(f"  {kind}: {count} / {len(rows)} flagged by the input gate")
    if missed:
        print(f"  naive reads not flagged: {', '.join(missed)}")


if __name__ == "__main__":
    main()
