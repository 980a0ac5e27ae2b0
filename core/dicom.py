"""DICOM films, read with pydicom into the 8-bit grayscale picture a reader would see.

Imported only when a DICOM file is read (:func:`casereview.data.decode_image` imports it lazily), so
that a PNG review never imports pydicom.

The order of the standard (PS3.4 N.2): stored values -> Modality LUT (rescale slope/intercept) -> VOI
(the VOI LUT Sequence when present, else the first Window Centre/Width pair, else the full stored
range) -> ``MONOCHROME1`` (or Presentation LUT Shape ``INVERSE``) inverted, once -> 8 bits -> the
stored orientation turned to the display one (Patient Orientation ``L\\F``). pydicom's
``pydicom.pixels`` functions do the LUT work.

Nothing identifying leaves this module: the dataset is dropped once the picture is made, the notes
hold only the technical attributes named in :func:`_describe` (each checked against its value
representation), error messages hold no header value but those, and pydicom's warnings and log lines
(which quote header values, patient names among them) are silenced while a file is read.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import UID, JPEGExtended12Bit

from casereview.data import MAX_PIXELS, CaseError

RADIOGRAPHY = ("CR", "DX", "RG")  # computed, digital and plain radiography: what a chest film is
CHEST = ("CHEST", "THORAX", "LUNG")  # a body part naming one of these (CHEST, CHEST_PA...) is a chest film
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "PALETTE COLOR")
DICOMDIR = "1.2.840.10008.1.3.10"
STRUCTURED_REPORTS = "1.2.840.10008.5.1.4.1.1.88."
# What to install for the syntaxes the required dependencies (pydicom, Pillow) do not decode (tried on
# pydicom's own test files): python-gdcm (BSD-3-Clause) reads JPEG-LS and JPEG lossless, pylibjpeg-libjpeg
# (GPL-3.0, so named second) those and 12-bit JPEG, which neither Pillow nor GDCM reads.
DECODER_HINT = ("pip install python-gdcm (BSD-3-Clause; the extra casereview[dicom-codecs]), "
                "or pip install pylibjpeg pylibjpeg-libjpeg (GPL-3.0)")
HINTS = {JPEGExtended12Bit: "pip install pylibjpeg pylibjpeg-libjpeg (GPL-3.0; Pillow and GDCM do not read 12-bit JPEG)"}
_CODE_STRING = re.compile(r"^[A-Z0-9 _]{1,16}$")  # DICOM's CS value representation


@dataclass(frozen=True)
class Film:
    pixels: np.ndarray  # uint8 (rows, columns): what a reader sees
    notes: list[str]  # what the film says about itself and what was done to it; no identifying attribute


@contextmanager
def _quiet() -> Iterator[None]:
    """pydicom's warnings and log lines while a file is read: they quote header values (a patient's
    name in an invalid-value warning), so none may reach stderr or a log."""
    log = logging.getLogger("pydicom")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _code(ds: Dataset, keyword: str) -> str | None:
    """A code string attribute (modality, body part...) when it is one; anything else is not repeated."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    text = str(value).strip().upper()
    return text if _CODE_STRING.match(text) else "(not a code string)"


def _parse(source: Path | bytes, name: str) -> Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Exception as exc:  # pydicom raises many types for a damaged file; its messages may quote values
        raise CaseError(f"{name}: not a readable DICOM file ({type(exc).__name__})") from None


def _check_header(ds: Dataset, name: str) -> None:
    """Refuse what is not one chest radiograph, before any pixel is decoded."""
    sop = str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or "")
    if sop == DICOMDIR or "DirectoryRecordSequence" in ds:
        raise CaseError(f"{name}: a DICOMDIR (the index of a DICOM disc), not a film; pass the image files it lists")
    if sop.startswith(STRUCTURED_REPORTS):
        raise CaseError(f"{name}: a DICOM structured report ({UID(sop).name}), not an image")
    if "PixelData" not in ds:
        raise CaseError(f"{name}: holds no pixel data ({UID(sop).name if sop else 'no SOP class'}), not a film")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise CaseError(f"{name}: a multi-frame object ({frames} frames), not one chest radiograph; export the frame to review")
    modality = _code(ds, "Modality")
    if modality is not None and modality not in RADIOGRAPHY:
        raise CaseError(f"{name}: a {modality} image, not a radiograph; only {', '.join(RADIOGRAPHY)} chest films are read")
    body = _code(ds, "BodyPartExamined")
    if body is not None and not any(word in body for word in CHEST):
        raise CaseError(f"{name}: body part {body}, not a chest film; the classifier reads chest X-rays only")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows * cols > MAX_PIXELS:
        raise CaseError(f"{name}: {cols}x{rows} pixels, too large to be read safely (over {MAX_PIXELS:,} pixels)")
    if min(rows, cols) < 8:
        raise CaseError(f"{name}: image of {cols}x{rows} px is too small to be a chest X-ray")
    allocated, stored, samples = (int(ds.get(k) or 0) for k in ("BitsAllocated", "BitsStored", "SamplesPerPixel"))
    photometric = _code(ds, "PhotometricInterpretation")
    if allocated not in (1, 8, 16, 32) or not 1 <= stored <= allocated or samples not in (1, 3):
        raise CaseError(f"{name}: inconsistent pixel header ({samples} samples, {stored} of {allocated} bits stored)")
    if photometric not in MONOCHROME + COLOUR or (samples == 1) != (photometric in MONOCHROME + ("PALETTE COLOR",)):
        raise CaseError(f"{name}: photometric interpretation {photometric} with {samples} samples per pixel is not read")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        decoder = get_decoder(syntax)
    except (NotImplementedError, ValueError, TypeError):
        raise CaseError(f"{name}: transfer syntax {syntax} has no pixel decoder in pydicom") from None
    if not decoder.is_available:
        raise CaseError(f"{name}: compressed as {UID(syntax).name} and no decoder for it is installed: "
                        + HINTS.get(syntax, DECODER_HINT))


def _stored_values(ds: Dataset, name: str) -> tuple[np.ndarray, str]:
    """The stored values (RGB for colour films) and their photometric interpretation after decoding;
    values beyond the Bits Stored the header declares are refused, not masked (the header lies)."""
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    decoder = get_decoder(syntax)
    try:
        arr, meta = decoder.as_array(ds, correct_unused_bits=False, as_rgb=True)
    except Exception as exc:  # a truncated or damaged pixel stream; the decoders' messages hold sizes, not values
        said = " ".join(str(exc).split())[:200]  # one line
        other = (f"; another decoder may read it: {HINTS.get(syntax, DECODER_HINT)}"
                 if syntax.is_compressed and decoder.missing_dependencies else "")
        raise CaseError(f"{name}: the pixel data cannot be decoded ({type(exc).__name__}: {said}){other}") from None
    stored, signed = int(ds.BitsStored), int(ds.get("PixelRepresentation") or 0) == 1
    lo, hi = (-(2 ** (stored - 1)), 2 ** (stored - 1) - 1) if signed else (0, 2**stored - 1)
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise CaseError(f"{name}: pixel values from {arr.min()} to {arr.max()} do not fit the {stored} bits stored "
                        "that the header declares; the header is wrong")
    return arr, str(meta.get("photometric_interpretation", ds.PhotometricInterpretation))


def _stored_range(ds: Dataset) -> tuple[float, float]:
    """The range of the values after the Modality LUT: the output range pydicom's windowing maps to."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    stored = int(ds.BitsStored)
    signed = ds.get("PixelRepresentation") == 1
    lo, hi = (-(2.0 ** (stored - 1)), 2.0 ** (stored - 1) - 1) if signed else (0.0, 2.0**stored - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = sorted((lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)))
    return lo, hi


def _to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    return np.clip(np.round((values.astype(np.float64) - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _count(ds: Dataset, keyword: str) -> int:
    value = ds.get(keyword)
    return len(value) if isinstance(value, (list, MultiValue, Sequence)) else 1


def _monochrome(arr: np.ndarray, ds: Dataset) -> tuple[np.ndarray, list[str]]:
    """:func:`_render` of a monochrome film. Integers of 16 bits or fewer go through it once per level
    (min to max), then through that table: the same picture, without windowing millions of pixels in
    float64 (that took 0.25 s of a 2,000 x 2,000 film's decode on the shared development machine)."""
    if arr.dtype.kind not in "iu" or arr.dtype.itemsize > 2 or not arr.size:
        return _render(arr, ds)
    low = int(arr.min())
    table, steps = _render(np.arange(low, int(arr.max()) + 1).astype(arr.dtype), ds)
    return table[arr.astype(np.int32) - low], steps


def _render(arr: np.ndarray, ds: Dataset) -> tuple[np.ndarray, list[str]]:
    """Modality LUT, VOI, 8 bits, inversion: the grayscale picture and what was applied."""
    values = apply_modality_lut(arr, ds)
    steps = []
    if "RescaleSlope" in ds or "ModalityLUTSequence" in ds:
        steps.append("modality LUT applied" if "ModalityLUTSequence" in ds
                     else f"rescaled (slope {float(ds.RescaleSlope):g}, intercept {float(ds.get('RescaleIntercept') or 0):g})")
    if ds.get("VOILUTSequence"):
        lut = ds.VOILUTSequence[0]
        out, (lo, hi) = apply_voi_lut(values, ds, index=0), (0.0, 2.0 ** int(lut.LUTDescriptor[2]) - 1)
        steps.append("VOI LUT applied" + (f" (the first of {len(ds.VOILUTSequence)})" if len(ds.VOILUTSequence) > 1 else ""))
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        out, (lo, hi) = apply_voi_lut(values, ds, index=0, prefer_lut=False), _stored_range(ds)
        centre, width = (ds[k].value[0] if _count(ds, k) > 1 else ds[k].value for k in ("WindowCenter", "WindowWidth"))
        function = _code(ds, "VOILUTFunction") or "LINEAR"
        steps.append(f"windowed at centre {float(centre):g} / width {float(width):g} ({function.lower()}"
                     + (f", the first of {_count(ds, 'WindowCenter')} windows)" if _count(ds, "WindowCenter") > 1 else ")"))
    else:
        out, (lo, hi) = values, _stored_range(ds)
        steps.append(f"no window in the file: the full stored range ({lo:g} to {hi:g}) mapped to 8 bits")
    gray = _to_uint8(out, lo, hi)
    # MONOCHROME1 and Presentation LUT Shape INVERSE say the same thing (PS3.3 C.8.11.6.1.2): invert once.
    if ds.PhotometricInterpretation == "MONOCHROME1" or _code(ds, "PresentationLUTShape") == "INVERSE":
        gray = 255 - gray
        steps.append("inverted once (MONOCHROME1: the lowest value is white)"
                     if ds.PhotometricInterpretation == "MONOCHROME1" else "inverted once (Presentation LUT Shape INVERSE)")
    return gray, steps


def _colour(arr: np.ndarray, ds: Dataset, photometric: str) -> tuple[np.ndarray, list[str]]:
    """A colour film as 8-bit grayscale, with the weights Pillow uses for colour PNG files."""
    from PIL import Image

    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
        arr = _to_uint8(arr, 0.0, 2.0**depth - 1)
    elif arr.dtype != np.uint8:
        arr = _to_uint8(arr, 0.0, 2.0 ** int(ds.BitsStored) - 1)
    gray = np.asarray(Image.fromarray(np.ascontiguousarray(arr), "RGB").convert("L"))
    return gray, [f"converted from {ds.PhotometricInterpretation} colour to 8-bit grayscale"]


def _orient(gray: np.ndarray, ds: Dataset) -> tuple[np.ndarray, list[str]]:
    """Turn the stored picture to the display orientation of a chest film, rows running to the
    patient's left and columns to the feet (Patient Orientation ``L\\F``), when the file says otherwise."""
    value = ds.get("PatientOrientation")
    if not value or _count(ds, "PatientOrientation") != 2:
        return gray, []
    row, col = (str(v).strip().upper()[:1] for v in value)
    if not {row, col} <= set("LRAPHF"):  # letters of the patient axes only (an empty value is none)
        return gray, []
    given, steps = f"{row}\\{col}", []
    if row in ("H", "F") and col in ("L", "R"):
        gray, (row, col) = gray.T, (col, row)
        steps.append("transposed")
    if row == "R":
        gray = gray[:, ::-1]
        steps.append("flipped left-right")
    if col == "H":
        gray = gray[::-1, :]
        steps.append("flipped top-bottom")
    if steps:
        steps = [f"{' and '.join(steps)} to the display orientation (Patient Orientation {given})"]
    return np.ascontiguousarray(gray), steps


def _describe(ds: Dataset, steps: list[str]) -> str:
    """The note for the record: only technical attributes, each a checked code string or a number."""
    facts = [f"modality {_code(ds, 'Modality') or 'not stated'}", f"body part {_code(ds, 'BodyPartExamined') or 'not stated'}",
             f"view {_code(ds, 'ViewPosition') or 'not stated'}", f"{_code(ds, 'PhotometricInterpretation')}",
             f"{int(ds.BitsStored)} of {int(ds.BitsAllocated)} bits stored",
             f"transfer syntax {UID(ds.file_meta.TransferSyntaxUID).name}"]
    return f"DICOM film ({', '.join(facts)}): {'; '.join(steps)}"


def read_film(source: Path | bytes, name: str) -> Film:
    """The film in ``source`` (a path or the file's bytes) as a reader would see it, or a
    :class:`CaseError` naming ``name`` (the path as given, never a header value) and why."""
    with _quiet():
        ds = _parse(source, name)
        try:
            return _read(ds, name)
        except CaseError:
            raise
        except Exception as exc:  # a value of the wrong kind (text for a number, a LUT that misses the data): its kind only
            raise CaseError(f"{name}: a DICOM header that contradicts itself or its pixel data ({type(exc).__name__})") from None


def _read(ds: Dataset, name: str) -> Film:
    if "TransferSyntaxUID" not in ds.file_meta:
        raise CaseError(f"{name}: no transfer syntax in the DICOM file meta information")
    _check_header(ds, name)
    arr, photometric = _stored_values(ds, name)
    gray, steps = _monochrome(arr, ds) if photometric in MONOCHROME else _colour(arr, ds, photometric)
    gray, turned = _orient(gray, ds)
    if _code(ds, "BurnedInAnnotation") == "YES":  # text in the pixels, possibly a name: illegible at 28 x 28
        turned.append("the film says its pixels carry burned-in annotation; only the 28 x 28 image is kept")
    return Film(gray, [_describe(ds, steps + turned)])
