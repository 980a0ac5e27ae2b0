"""DICOM films, written with pydicom here from dataset images (tests/dicom_support.py): each variant
decodes to the PNG twin's 28x28 image and gets the same p(pneumonia) from a real review; films that
are not one chest radiograph, and damaged ones, are refused with one line; no identifying attribute
reaches anything the review writes; a PNG review never imports pydicom."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import BasicTextSRStorage, CTImageStorage, JPEGLSLossless

from case_index_support import index_settings
from casereview.data import CaseError, check_image_path, decode_image, expand_folders, is_dicom, load_split
from casereview.tools.case_index import chroma_path
from casereview.tools.index_build import build_index
from dicom_support import IDENTIFYING, LOSSY, MARKER, VARIANTS, compressed, film, monochrome1_12bit_window, save

CLI = [sys.executable, "-c", "import sys; from casereview.cli import main; sys.exit(main())"]
SCALE = 8  # films of 224 x 224 px: the resize to 28 x 28 is exercised too


@pytest.fixture(scope="module")
def images(data_root) -> np.ndarray:
    return load_split("test", data_root).images[:4]


def png_twin(img: np.ndarray, path: Path) -> np.ndarray:
    Image.fromarray(img).save(path)
    return decode_image(path).image


# A lossy syntax is compared on 224 px films only, where the resize averages its error.
@pytest.mark.parametrize(("variant", "scale"), [(v, s) for v in VARIANTS for s in (1, SCALE) if not (v in LOSSY and s == 1)])
def test_each_variant_decodes_to_its_png_twin(variant, scale, images, tmp_path):
    for i, img in enumerate(images):
        big = np.kron(img, np.ones((scale, scale), np.uint8))
        expected = png_twin(big, tmp_path / f"{i}.png")
        decoded = decode_image(save(VARIANTS[variant](big), tmp_path / f"{i}.dcm"))
        diff = np.abs(decoded.image.astype(int) - expected.astype(int)).max()
        assert diff <= (1 if variant in LOSSY else 0), (variant, i, diff)
        assert decoded.notes[0].startswith("DICOM film (modality DX, body part CHEST, view PA, ")
        assert (decoded.views is None) == (scale == 1)


def test_notes_say_how_the_film_was_read(images, tmp_path):
    notes = decode_image(save(monochrome1_12bit_window(images[0]), tmp_path / "m1.dcm")).notes
    assert notes == ["DICOM film (modality DX, body part CHEST, view PA, MONOCHROME1, 12 of 16 bits stored, transfer syntax "
                     "Explicit VR Little Endian): windowed at centre 1510.5 / width 1021 (linear, the first of 2 windows); "
                     "inverted once (MONOCHROME1: the lowest value is white)"]


def test_monochrome1_is_inverted_once_and_inverse_shape_alone_inverts(images, tmp_path):
    img = images[0]
    m1 = monochrome1_12bit_window(img)
    del m1.PresentationLUTShape  # MONOCHROME1 alone: the same single inversion
    assert np.array_equal(decode_image(save(m1, tmp_path / "a.dcm")).image, img)
    m2 = film(255 - img, 8, PresentationLUTShape="INVERSE")  # MONOCHROME2 shown inverted
    assert np.array_equal(decode_image(save(m2, tmp_path / "b.dcm")).image, img)


def test_patient_orientation_is_turned_to_the_display_one(images, tmp_path):
    img = images[1]
    mirrored = film(img[:, ::-1].T.copy(), 8, PatientOrientation=["F", "R"])  # stored transposed and mirrored
    decoded = decode_image(save(mirrored, tmp_path / "o.dcm"))
    assert np.array_equal(decoded.image, img)
    assert "transposed and flipped left-right to the display orientation (Patient Orientation F\\R)" in decoded.notes[0]
    burned = decode_image(save(film(img, 8, BurnedInAnnotation="YES"), tmp_path / "b.dcm")).notes[0]
    assert burned.endswith("the film says its pixels carry burned-in annotation; only the 28 x 28 image is kept")


def test_rgb_and_palette_films_are_converted_with_a_note(images, tmp_path):
    rgb = np.stack([images[2]] * 3, axis=-1)
    expected = png_twin(rgb, tmp_path / "rgb.png")
    decoded = decode_image(save(film(rgb, 8, "RGB"), tmp_path / "rgb.dcm"))
    assert np.array_equal(decoded.image, expected) and "converted from RGB colour to 8-bit grayscale" in decoded.notes[0]
    palette = film(images[2], 8, "PALETTE COLOR")
    lut = (np.arange(256, dtype=np.uint16) * 257).tobytes()  # a grey palette, 16-bit entries
    for colour in ("Red", "Green", "Blue"):
        setattr(palette, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(palette, f"{colour}PaletteColorLookupTableData", lut)
    decoded = decode_image(save(palette, tmp_path / "pal.dcm"))
    assert np.array_equal(decoded.image, images[2]) and "converted from PALETTE COLOR colour" in decoded.notes[0]


def test_bytes_any_name_and_folders(images, tmp_path):
    (tmp_path / "films").mkdir()
    path = save(monochrome1_12bit_window(images[0]), tmp_path / "films" / "IM0001")  # no suffix: found by its preamble
    assert is_dicom(path) and is_dicom(path.read_bytes()) and not is_dicom(tmp_path)
    from_bytes = decode_image(path.read_bytes())
    assert np.array_equal(from_bytes.image, images[0]) and from_bytes.notes == decode_image(path).notes
    assert check_image_path(path) == path
    save(film(images[1], 8), tmp_path / "films" / "b.dcm")
    Image.fromarray(images[2]).save(tmp_path / "films" / "c.png")
    assert [Path(r).name for r in expand_folders([str(tmp_path / "films")])] == ["IM0001", "b.dcm", "c.png"]
    Image.fromarray(images[2]).save(tmp_path / "x.png")
    assert np.array_equal(decode_image((tmp_path / "x.png").read_bytes()).image, images[2])  # PNG bytes too


def _no_pixels(img):
    ds = film(img, 8)
    del ds.PixelData
    return ds


def _dicomdir(img):
    ds = film(img, 8)
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.SOPClassUID = "1.2.840.10008.1.3.10"
    del ds.PixelData
    return ds


def _sr(img):
    ds = film(img, 8)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.Modality = "SR"
    del ds.PixelData
    return ds


def _multi_frame(img):
    ds = film(np.concatenate([img, img]), 8, NumberOfFrames=2)
    ds.Rows = img.shape[0]
    return ds


def _absurd(img):
    ds = film(img, 8)
    ds.Rows = ds.Columns = 60_000
    return ds


def _lying_bits(img):
    ds = film(img.astype(np.uint16) * 16, 8)  # 12-bit values, a header saying 8 bits stored in 16
    ds.BitsAllocated = 16
    return ds


def _no_decoder(img):
    return compressed(film(img, 8), JPEGLSLossless, b"\xff\xd8 not really JPEG-LS \xff\xd9")


BAD = {
    "CT": (lambda img: film(img, 8, Modality="CT", SOPClassUID=CTImageStorage), "a CT image, not a radiograph"),
    "MR": (lambda img: film(img, 8, Modality="MR"), "a MR image, not a radiograph"),
    "US": (lambda img: film(img, 8, Modality="US"), "a US image, not a radiograph"),
    "hand": (lambda img: film(img, 8, BodyPartExamined="HAND"), "body part HAND, not a chest film"),
    "multi-frame": (_multi_frame, "a multi-frame object (2 frames), not one chest radiograph"),
    "no pixel data": (_no_pixels, "holds no pixel data (Digital X-Ray Image Storage - For Presentation)"),
    "DICOMDIR": (_dicomdir, "a DICOMDIR (the index of a DICOM disc), not a film"),
    "structured report": (_sr, "a DICOM structured report (Basic Text SR Storage), not an image"),
    "absurd dimensions": (_absurd, "60000x60000 pixels, too large to be read safely"),
    "lying bits stored": (_lying_bits, "do not fit the 8 bits stored that the header declares; the header is wrong"),
    "window of width 0": (lambda img: film(img, 8, WindowCenter=100, WindowWidth=0),
                          "a DICOM header that contradicts itself or its pixel data (ValueError)"),
    "no decoder": (_no_decoder, "compressed as JPEG-LS Lossless Image Compression and no decoder for it is installed: pip install"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_films_are_refused_with_one_line_and_no_header_value(case, images, tmp_path):
    make, words = BAD[case]
    ds = make(images[0])
    for keyword, value in IDENTIFYING.items():
        setattr(ds, keyword, value)
    path = save(ds, tmp_path / "film.dcm")
    if case == "no decoder" and _available(JPEGLSLossless):
        words = "the pixel data cannot be decoded"  # a JPEG-LS decoder is installed here: the stream is garbage
    with pytest.raises(CaseError) as err:
        check_image_path(path)
    message = str(err.value)
    assert words in message and "\n" not in message and MARKER not in message, message


@pytest.mark.parametrize("case", ["CT", "lying bits stored", "DICOMDIR", "no decoder"])
def test_the_cli_refuses_a_bad_film_with_one_line_before_anything_starts(case, images, tmp_path, capsys, data_root):
    from casereview.cli import main

    ds = BAD[case][0](images[0])
    for keyword, value in IDENTIFYING.items():
        setattr(ds, keyword, value)
    path = save(ds, tmp_path / "film.dcm")
    code = main(["review", str(path), "--out", str(tmp_path / "out"), "--data-root", str(data_root)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(f"error: {path}: "), err
    assert MARKER not in err and not (tmp_path / "out").exists() and not list(tmp_path.rglob("*.sqlite"))


def _available(syntax) -> bool:
    from pydicom.pixels import get_decoder

    return get_decoder(syntax).is_available


@pytest.mark.parametrize("damage", ["truncated", "not DICOM", "empty"])
def test_damaged_files_are_refused_with_one_line(damage, images, tmp_path):
    path = save(monochrome1_12bit_window(np.kron(images[0], np.ones((4, 4), np.uint8))), tmp_path / "film.dcm")
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) - 5000], "not DICOM": b"hello, I am text", "empty": b""}[damage])
    with pytest.raises(CaseError) as err:
        check_image_path(path)
    words = "the pixel data cannot be decoded" if damage == "truncated" else "not a readable DICOM file"
    assert str(err.value).startswith(f"{path}: {words}") and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def review_env(tmp_path_factory, data_root, random_checkpoint) -> dict[str, str]:
    """The environment of a review process over a small index built here (random classifier)."""
    work = tmp_path_factory.mktemp("dicom-review")
    s = index_settings(work, data_root, checkpoint=random_checkpoint, limit=60, embedder="cnn")
    build_index(s, progress=False)
    return {k: v for k, v in os.environ.items() if not k.startswith("CASEREVIEW_")} | {
        "CASEREVIEW_DATA_ROOT": str(data_root), "CASEREVIEW_PATHS_WORKDIR": str(work),
        "CASEREVIEW_INDEX_CHROMA_PATH": str(chroma_path(s)), "CASEREVIEW_CLASSIFIER_CHECKPOINT": str(random_checkpoint),
        "CASEREVIEW_CLASSIFIER_DEVICE": "cpu", "CASEREVIEW_GATE_FIT_LIMIT": "300", "OMP_NUM_THREADS": "1",
    }


@pytest.mark.slow
def test_a_png_review_imports_no_pydicom(review_env, images, tmp_path):
    """A real `casereview review` of a folder of PNG files, in a fresh process, never imports pydicom."""
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.kron(images[i], np.ones((SCALE, SCALE), np.uint8))).save(folder / f"{i}.png")
    code = ("import sys; from casereview.cli import main; code = main(sys.argv[1:]); "
            "assert 'pydicom' not in sys.modules, 'pydicom was imported'; sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, "review", str(folder), "--out", str(tmp_path / "out")],
                          env=review_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "out").glob("*.json"))) == 2


@pytest.mark.slow
def test_a_review_of_films_matches_their_png_twins_and_writes_no_patient_data(review_env, images, tmp_path):
    """One real `casereview -v review` over a folder of every variant (each film carrying the marker in
    every identifying attribute) beside its PNG twin: the same p(pneumonia) and label, and the marker in
    no file the review wrote (records, Markdown, HTML, checkpoints, caches), nor on stdout or stderr."""
    folder = tmp_path / "films"
    folder.mkdir()
    img = np.kron(images[3], np.ones((SCALE, SCALE), np.uint8))
    Image.fromarray(img).save(folder / "twin.png")
    names = {}
    for i, (variant, make) in enumerate(VARIANTS.items()):
        ds = make(img)
        for keyword, value in IDENTIFYING.items():
            setattr(ds, keyword, value)
        names[variant] = save(ds, folder / (f"film{i}.dcm" if i else "IM0000")).name  # one without a suffix
    out = tmp_path / "out"
    proc = subprocess.run([*CLI, "-v", "review", str(folder), "--out", str(out), "--run-id", "films"], env=review_env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {Path(r["case_id"]).name: r for r in (json.loads(p.read_text()) for p in out.glob("*.json"))}
    assert set(records) == {"twin.png", *names.values()}
    twin = records["twin.png"]["classifier"]
    for variant, name in names.items():
        record = records[name]
        tolerance = 0.02 if variant in LOSSY else 1e-6
        assert abs(record["classifier"]["prob_pneumonia"] - twin["prob_pneumonia"]) <= tolerance, variant
        assert record["classifier"]["label"] == twin["label"], variant
        assert record["notes"][0].startswith("DICOM film (modality DX, body part CHEST, view PA"), record["notes"]
    assert MARKER not in proc.stdout and MARKER not in proc.stderr
    written = [p for root in (out, Path(review_env["CASEREVIEW_PATHS_WORKDIR"])) for p in root.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".sqlite") for p in written) and any(p.suffix == ".md" for p in written)
    leaks = [p for p in written if MARKER.encode() in p.read_bytes()]
    assert not leaks, leaks


@pytest.mark.slow
def test_a_bad_film_in_a_folder_stops_the_run_with_one_line_before_anything_starts(review_env, images, tmp_path):
    folder = tmp_path / "films"
    folder.mkdir()
    save(film(images[0], 8), folder / "a.dcm")
    save(film(images[1], 8, Modality="CT"), folder / "b.dcm")
    out = tmp_path / "out"
    proc = subprocess.run([*CLI, "review", str(folder), "--out", str(out)], env=review_env, capture_output=True, text=True,
                          timeout=300)
    said = f"error: {folder / 'b.dcm'}: a CT image, not a radiograph; only CR, DX, RG chest films are read"
    assert proc.returncode == 2 and proc.stderr.strip() == said, proc.stderr
    assert not out.exists()


# pydicom's own test files (shipped in the pydicom wheel): real films from other writers.
SHIPPED = {
    "CT_small.dcm": "a CT image, not a radiograph",
    "MR_small.dcm": "a MR image, not a radiograph",
    "MR_truncated.dcm": "a MR image, not a radiograph",  # refused by its header before its pixels are read
    "reportsi.dcm": "a DICOM structured report (Basic Text SR Storage), not an image",
    "rtplan.dcm": "holds no pixel data (RT Plan Storage), not a film",
    "dicomdirtests/DICOMDIR": "a DICOMDIR (the index of a DICOM disc), not a film",
    "SC_rgb_small_odd.dcm": "a OT image, not a radiograph",
}


@pytest.mark.parametrize("name", list(SHIPPED))
def test_pydicoms_own_test_files_are_refused_for_what_they_are(name):
    from pydicom.data import get_testdata_file

    path = Path(get_testdata_file(name))
    with pytest.raises(CaseError) as err:
        check_image_path(path)
    assert SHIPPED[name] in str(err.value) and "\n" not in str(err.value), err.value


@pytest.mark.parametrize(("name", "words"), [
    ("MR_small_jpeg_ls_lossless.dcm", "compressed as JPEG-LS Lossless Image Compression and no decoder for it is installed: "
                                      "pip install python-gdcm"),
    ("JPGExtended.dcm", "Pillow does not support 'JPEG Extended' for samples with 12-bit precision); another decoder may read it: "
                        "pip install pylibjpeg pylibjpeg-libjpeg"),
])
def test_a_syntax_without_a_decoder_names_what_to_install(name, words, tmp_path):
    """pydicom's JPEG-LS and 12-bit JPEG films, relabelled as chest radiographs; where a decoder for them
    is installed (python-gdcm, pylibjpeg-libjpeg) they are read instead."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import get_decoder

    ds = pydicom.dcmread(get_testdata_file(name))
    ds.Modality, ds.BodyPartExamined = "DX", "CHEST"
    path = save(ds, tmp_path / name)
    if get_decoder(ds.file_meta.TransferSyntaxUID).missing_dependencies:
        with pytest.raises(CaseError) as err:
            check_image_path(path)
        assert words in str(err.value) and "\n" not in str(err.value), err.value
    else:
        assert decode_image(path).image.shape == (28, 28)
