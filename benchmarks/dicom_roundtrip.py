"""Max absolute difference between each DICOM variant's decoded 28x28 image and its PNG twin's, over
``--n`` test images (a fixed random subset), for films of 28 x 28 and of 224 x 224 px.

    python benchmarks/dicom_roundtrip.py [--n 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dicom_support import VARIANTS, save  # noqa: E402  (the films the tests write)

from casereview.config import load_settings  # noqa: E402
from casereview.data import decode_image, load_split, subset_indices  # noqa: E402

SCALES = (1, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50)
    args = parser.parse_args()
    data = load_settings().data
    test = load_split("test", data.root, data.download)
    rows = subset_indices(len(test), args.n)
    worst = {(variant, scale): 0 for variant in VARIANTS for scale in SCALES}
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            for scale in SCALES:
                picture = np.kron(test.images[row], np.ones((scale, scale), np.uint8))
                Image.fromarray(picture).save(Path(tmp) / "twin.png")
                twin = decode_image(Path(tmp) / "twin.png").image.astype(int)
                for variant, make in VARIANTS.items():
                    decoded = decode_image(save(make(picture), Path(tmp) / f"{scale}.dcm")).image.astype(int)
                    worst[variant, scale] = max(worst[variant, scale], int(np.abs(decoded - twin).max()))
    print(f"max |DICOM - PNG twin| over {len(rows)} test images (28 x 28 decoded images)")
    print("| variant | " + " | ".join(f"{28 * s} px film" for s in SCALES) + " |")
    print("| --- |" + " --- |" * len(SCALES))
    for variant in VARIANTS:
        print(f"| {variant} | " + " | ".join(str(worst[variant, s]) for s in SCALES) + " |")


if __name__ == "__main__":
    main()
