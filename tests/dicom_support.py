"""DICOM films written with pydicom from 8-bit images, each encoded so that a correct reader recovers
the image exactly: the tests (tests/test_dicom.py) and benchmarks/dicom_gate.py read them back.

Each variant maps the 8-bit image ``v`` to stored values and header attributes that the standard's
pipeline (Modality LUT -> VOI -> MONOCHROME1 inversion -> 8 bits over the output range) maps back
to ``v``; the arithmetic is spelled out per variant, so a reader that skips or doubles a step misses.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit,
    RLELossless, generate_uid,
)

MARKER = "ZQXMARKER7"  # in every identifying attribute of a film: must appear in nothing the review writes
IDENTIFYING = {
    "PatientName": f"{MARKER}^Jane", "PatientID": f"{MARKER}-ID",
    "PatientBirthDate": MARKER,  # not a date: pydicom warns, quoting it, when it is read
    "OtherPatientIDs": f"{MARKER}-OTHER", "AccessionNumber": f"{MARKER}AC"[:16], "InstitutionName": f"{MARKER} Hospital",
    "InstitutionAddress": f"1 {MARKER} Street", "ReferringPhysicianName": f"{MARKER}^Doctor",
    "StudyDescription": f"chest {MARKER}", "SeriesDescription": f"PA {MARKER}", "StudyID": f"{MARKER}"[:16],
    "OperatorsName": f"{MARKER}^Op", "DeviceSerialNumber": f"{MARKER}-SN", "PatientAddress": f"{MARKER} Road",
}


def film(pixels: np.ndarray, bits_stored: int, photometric: str = "MONOCHROME2", **attributes) -> Dataset:
    """A DX chest film (PA) of ``pixels`` stored as given, uncompressed, with ``attributes`` on top."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def monochrome2_8bit(img: np.ndarray) -> Dataset:
    """Stored as is, no window: the full 8-bit stored range maps to itself."""
    return film(img, 8)


def monochrome1_12bit_window(img: np.ndarray) -> Dataset:
    """MONOCHROME1, stored x = 1000 + 4 (255 - v) in 12 bits; the first window (centre 1510.5, width 1021)
    maps x linearly onto the 12-bit range so that, in 8 bits, x -> 255 - v, and the inversion gives v.
    A second window that would show nothing checks that the first pair is used."""
    stored = (1000 + 4 * (255 - img.astype(np.uint16))).astype(np.uint16)
    return film(stored, 12, "MONOCHROME1", WindowCenter=[1510.5, 40], WindowWidth=[1021, 10],
                PresentationLUTShape="INVERSE")


def monochrome1_voi_lut(img: np.ndarray) -> Dataset:
    """MONOCHROME1, stored x = 2000 + (255 - v); a 16-bit VOI LUT from 2000 maps i -> 257 i, so 8 bits
    give 255 - v, and the inversion v. A window that contradicts it checks that the LUT is preferred."""
    stored = (2000 + (255 - img.astype(np.uint16))).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [256, 2000, 16]
    item.LUTData = (np.arange(256, dtype=np.uint16) * 257).tobytes()  # OW
    return film(stored, 12, "MONOCHROME1", VOILUTSequence=Sequence([item]), WindowCenter=100, WindowWidth=50)


def rescaled(img: np.ndarray) -> Dataset:
    """Stored x = v in 8 bits with slope 2, intercept -1000: modality values 2v - 1000 over the range
    -1000 to -490, mapped back to v."""
    return film(img, 8, RescaleSlope=2, RescaleIntercept=-1000, RescaleType="US")


def _encoded(img: np.ndarray, kind: str, **params) -> bytes:
    """``img`` encoded by Pillow (OpenJPEG, libjpeg-turbo): a frame to encapsulate."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=kind, **params)
    return buf.getvalue()


def compressed(ds: Dataset, syntax: UID, frame: bytes) -> Dataset:
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return ds


def jpeg2000_lossless(img: np.ndarray) -> Dataset:
    """Pillow's OpenJPEG encoder, reversible wavelet: the same bytes as the 8-bit film."""
    return compressed(film(img, 8), JPEG2000Lossless, _encoded(img, "JPEG2000", codec="j2k"))


def jpeg2000_lossy(img: np.ndarray) -> Dataset:
    """Irreversible wavelet at 55 dB PSNR: a lossy film (off by up to 3 grey levels at 28 px)."""
    frame = _encoded(img, "JPEG2000", codec="j2k", irreversible=True, quality_mode="dB", quality_layers=[55])
    ds = compressed(film(img, 8), JPEG2000, frame)
    ds.LossyImageCompression = "01"
    return ds


def jpeg_baseline(img: np.ndarray) -> Dataset:
    """8-bit JPEG at quality 98, no chroma subsampling (one channel): a lossy film."""
    ds = compressed(film(img, 8), JPEGBaseline8Bit, _encoded(img, "JPEG", quality=98))
    ds.LossyImageCompression = "01"
    return ds


def rle(img: np.ndarray) -> Dataset:
    ds = monochrome1_12bit_window(img)
    ds.compress(RLELossless)
    return ds


VARIANTS = {
    "MONOCHROME2 8-bit": monochrome2_8bit,
    "MONOCHROME1 12-bit, window": monochrome1_12bit_window,
    "MONOCHROME1 12-bit, VOI LUT Sequence": monochrome1_voi_lut,
    "rescale slope/intercept": rescaled,
    "JPEG 2000 lossless": jpeg2000_lossless,
    "JPEG 2000 lossy": jpeg2000_lossy,
    "JPEG baseline (lossy)": jpeg_baseline,
    "RLE lossless (MONOCHROME1 12-bit)": rle,
}
LOSSY = {"JPEG 2000 lossy", "JPEG baseline (lossy)"}
