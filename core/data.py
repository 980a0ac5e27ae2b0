"""The data layer, below everything else: PneumoniaMNIST splits, cases and image files.

- Splits are read from medmnist's file (``pneumoniamnist.npz`` under the data root); when the file
  is missing and the download is allowed, ``medmnist`` downloads it. Every command reaches the
  data through :func:`load_split`, so they all download (or fail) the same way.
- A case is ``split:index`` (``test:42``) or an image file: PNG, JPEG or a DICOM film (``.dcm``, or
  any name with ``DICM`` at byte 128). Image files are decoded by one function, :func:`decode_image`
  (a path or the file's bytes), into what the classifier sees: uint8 28x28 grayscale, brought there
  the way MedMNIST made its images (centre square crop, resize). DICOM specifics live in
  ``casereview.dicom``, imported only when a DICOM file is read (a PNG review imports no pydicom).

Labels: 0 = normal, 1 = pneumonia.
"""

from __future__ import annotations

import io
import re
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from casereview.errors import CaseReviewError, root_cause, shown

SPLITS = ("train", "val", "test")
CLASS_NAMES = ("normal", "pneumonia")
DATA_FILE = "pneumoniamnist.npz"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIX = ".dcm"
DICOM_MAGIC = (128, b"DICM")  # the DICOM preamble: 128 bytes, then "DICM" (PS3.10 7.1)
SIZE = 28
MAX_PIXELS = 64_000_000  # larger files are refused: no chest film needs more, a decompression bomb does
_REF = re.compile(r"^(train|val|test):(-?\d{1,18})$")  # a longer index is out of any range (and int() refuses 4,300 digits)
_LONG_REF = re.compile(r"^(train|val|test):-?\d{19,}$")
DATA_HINT = (
    "set the data root to a folder holding {file} (--data-root or CASEREVIEW_DATA_ROOT), "
    "or allow the download (CASEREVIEW_DATA_DOWNLOAD=true, the default)"
)


class DataError(CaseReviewError):
    """The dataset cannot be found or read; the message says what to do."""


class CaseError(CaseReviewError, ValueError):
    """A case reference or image that cannot be used; the message says why."""


@dataclass(frozen=True)
class Split:
    name: str
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


def data_file(root: Path | str | None) -> Path:
    """Where the dataset file is (or would be downloaded to): ``root`` or medmnist's default folder."""
    # medmnist.info.DEFAULT_ROOT, without importing medmnist (which imports scikit-learn and pandas,
    # about 2 s of every command's start); tests/test_classifier_data.py checks that they agree.
    return (Path(root) if root else Path.home() / ".medmnist") / DATA_FILE


def _missing_parents(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


@lru_cache(maxsize=8)
def _load_split(split: str, root: str | None, download: bool) -> Split:
    path = data_file(root)
    if path.exists() and not path.is_file():  # a folder of that name: a download could not replace it either
        raise DataError(f"{path} is not a file (a folder or a device); " + DATA_HINT.format(file=DATA_FILE))
    if not path.is_file():
        if not download:
            raise DataError(f"{path} not found: " + DATA_HINT.format(file=DATA_FILE))
        import medmnist

        created = _missing_parents(path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            medmnist.PneumoniaMNIST(split=split, root=str(path.parent), download=True, size=SIZE)
        except Exception as exc:  # medmnist raises a bare RuntimeError for any failure: name its cause
            for folder in created:  # a failed download leaves no empty data root behind
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            raise DataError(
                f"could not download PneumoniaMNIST into {path.parent} ({root_cause(exc)}). "
                f"Copy {DATA_FILE} there or set --data-root / CASEREVIEW_DATA_ROOT to the folder holding it."
            ) from exc
    try:
        # medmnist's own file layout ({split}_images, {split}_labels), read as medmnist.PneumoniaMNIST
        # reads it with download=False (no MD5 check, which a re-ordered copy would fail).
        with np.load(path) as npz:
            images = np.asarray(npz[f"{split}_images"])
            labels = np.asarray(npz[f"{split}_labels"]).reshape(-1).astype(np.int64)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as exc:
        raise DataError(f"{path} is not a readable PneumoniaMNIST .npz file ({exc!s}).") from exc
    if images.ndim != 3 or images.shape[1:] != (SIZE, SIZE) or images.dtype != np.uint8:
        raise DataError(f"{path}: {split}_images should be uint8 (N, 28, 28), got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} {split} images but {len(labels)} labels")
    images.flags.writeable = False  # shared by every caller of the cache
    return Split(split, images, labels)


def load_split(split: str, root: Path | str | None = None, download: bool = False) -> Split:
    """One official split as read-only numpy arrays (cached per process)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return _load_split(split, str(root) if root else None, download)


def subset_indices(n: int, limit: int | None) -> np.ndarray:
    """All indices, or a fixed random subset of ``limit`` of them (sorted).

    Random rather than the first N: the train split's order is not guaranteed (the shared
    copy is grouped by class), and a prefix could hold one class only.
    """
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).permutation(n)[:limit])


@dataclass(frozen=True)
class Case:
    """One case to review, decoded once: the 28x28 image and, for dataset cases, the truth."""

    case_id: str  # "test:42" or the image path as given
    image: np.ndarray  # uint8 (28, 28)
    label: int | None = None  # ground truth when known (0 normal, 1 pneumonia)
    split: str | None = None
    index: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)  # e.g. how a file was brought to 28x28
    views: np.ndarray | None = None  # image files of another size: other resizes of the file (resize_views)

    @property
    def label_name(self) -> str | None:
        return None if self.label is None else CLASS_NAMES[self.label]


def case_id(split: str, index: int) -> str:
    return f"{split}:{index}"


def parse_ref(ref: str) -> tuple[str, int] | None:
    """``"test:42"`` -> ``("test", 42)``; anything else (a path) -> ``None``."""
    m = _REF.match(ref.strip())
    return (m.group(1), int(m.group(2))) if m else None


HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # PIL modes of 16- and 32-bit images


def _to_gray8(img: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit grayscale that keeps the signal.

    16-bit and 32-bit images are rescaled by their value range (``convert("L")`` would clip
    them to white); transparency is composited on black (film background); palette, CMYK
    and colour images go through RGB.
    """
    if img.mode in HIGH_DEPTH_MODES:
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        scaled = np.zeros_like(a) if hi <= lo else (a - lo) * (255.0 / (hi - lo))
        return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("L")


class DecodedImage(NamedTuple):
    image: np.ndarray  # uint8 (size, size): what the classifier sees
    notes: list[str]  # what was done to bring the file there
    views: np.ndarray | None  # (V, size, size): other plausible resizes of the same file (None: already size x size)


def _square(img: Image.Image, size: int, scale: float = 1.0, resample: int = Image.Resampling.BICUBIC) -> np.ndarray:
    """The centre square (``scale`` of the short side) resized to ``size`` x ``size``."""
    w, h = img.size
    side = max(1, round(min(w, h) * scale))
    left, top = (w - side) // 2, (h - side) // 2
    crop = img.crop((left, top, left + side, top + side))
    return np.array(crop if side == size else crop.resize((size, size), resample), dtype=np.uint8)


def resize_views(img: Image.Image, size: int = SIZE) -> np.ndarray:
    """The canonical view (centre square, bicubic) first, then other ways a film could plausibly
    have been brought to ``size`` px: a slightly tighter centre crop (95%), the whole frame squashed
    to a square, and area or bilinear instead of bicubic resampling. A prediction that moves across
    them depends on the resize rather than on the film."""
    return np.stack([
        _square(img, size),
        _square(img, size, 0.95),
        np.array(img.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8),
        _square(img, size, resample=Image.Resampling.BOX),
        _square(img, size, resample=Image.Resampling.BILINEAR),
    ])


ImageSource = Path | bytes  # an image file, or its bytes (what a remote caller sends)


def _name(source: ImageSource) -> str:
    """How messages name an image: its path as given; bytes by their size only."""
    return f"image bytes ({len(source):,} bytes)" if isinstance(source, bytes) else str(source)


def is_dicom(source: ImageSource) -> bool:
    """A DICOM file: named ``.dcm``, or carrying the DICOM preamble whatever its name."""
    offset, magic = DICOM_MAGIC
    if isinstance(source, bytes):
        return source[offset : offset + len(magic)] == magic
    if source.suffix.lower() == DICOM_SUFFIX:
        return True
    try:
        with open(source, "rb") as f:
            return f.read(offset + len(magic))[offset:] == magic
    except OSError:
        return False


@contextmanager
def _opened(source: ImageSource) -> Iterator[Image.Image]:
    """The image file open (its header read), or a :class:`CaseError` for a file that is unreadable or
    too large to decode safely (also when decoding inside the block finds either)."""
    path = _name(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise Image.DecompressionBombError(f"{im.width}x{im.height} pixels")
                yield im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise CaseError(f"{path}: image too large to be read safely (over {MAX_PIXELS:,} pixels; a decompression bomb?)") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CaseError(f"{path}: unreadable image ({exc})") from exc


class _Read(NamedTuple):
    img: Image.Image  # 8-bit grayscale ("L")
    notes: list[str]  # what the file says about itself (a DICOM film's note)
    steps: list[str]  # the conversions it needed, said with the resize when there is one
    original: str  # the file as it was, for the note


def _read_dicom(source: ImageSource) -> _Read:
    """A DICOM film windowed as a reader sees it (see ``casereview.dicom``), with its notes."""
    from casereview.dicom import read_film  # here, not at the top: a PNG review imports no pydicom

    film = read_film(source, _name(source))
    rows, cols = film.pixels.shape
    return _Read(Image.fromarray(film.pixels, mode="L"), film.notes, [], f"DICOM film ({cols}x{rows})")


def _read_picture(source: ImageSource) -> _Read:
    """A PNG or JPEG file as 8-bit grayscale, upright (EXIF), with the conversion it needed."""
    with _opened(source) as im:
        im.load()
        mode, original = im.mode, f"image file ({im.width}x{im.height} {im.mode})"
        img = _to_gray8(ImageOps.exif_transpose(im))
    steps = [] if mode == "L" else [f"converted from {mode} to 8-bit grayscale"
                                    + (" (rescaled by its value range)" if mode in HIGH_DEPTH_MODES else "")]
    return _Read(img, [], steps, original)


def decode_image(source: ImageSource | str, size: int = SIZE) -> DecodedImage:
    """Read an image file (a path, or the file's bytes) as uint8 (size, size) grayscale (centre square
    crop, bicubic resize, the way MedMNIST made its images); also says what was done to it and, for
    files of another size, the other resize views of :func:`resize_views`. DICOM films are windowed
    first (``casereview.dicom``); their notes say what the film is and how it was read."""
    source = source if isinstance(source, bytes) else Path(source)
    if isinstance(source, Path) and is_dicom(source):
        try:
            stat = source.stat()
        except OSError as exc:
            raise CaseError(f"{source}: unreadable image ({exc.strerror})") from exc
        film = _decoded_film(str(source), str(source.resolve()), stat.st_mtime_ns, stat.st_size, size)
        return DecodedImage(film.image.copy(), list(film.notes), None if film.views is None else film.views.copy())
    return _decode(source, size)


@lru_cache(maxsize=256)
def _decoded_film(path: str, resolved: str, mtime_ns: int, length: int, size: int) -> DecodedImage:
    """A DICOM film file decoded once per version of the file (its resolved path, time and length):
    :func:`check_image_path` reads a film whole before any model loads, and the review that follows
    reads it again. 5 KB an entry (the image and its resize views)."""
    return _decode(Path(path), size)


def _decode(source: ImageSource, size: int) -> DecodedImage:
    img, notes, steps, original = _read_dicom(source) if is_dicom(source) else _read_picture(source)
    w, h = img.size
    if min(w, h) < 8:
        raise CaseError(f"{_name(source)}: image of {w}x{h} px is too small to be a chest X-ray")
    if w != h:
        steps.append(f"centre-cropped to {min(w, h)}x{min(w, h)}")
    if min(w, h) != size:
        steps.append(f"resized to {size}x{size} (bicubic)")
    if steps:  # say what was done, only that
        notes.append(
            f"{original} {', '.join(steps)}; the classifier has only seen MedMNIST-style "
            "images, so treat its output on other images with caution"
        )
    if (w, h) == (size, size):
        return DecodedImage(np.array(img, dtype=np.uint8), notes, None)  # a writable copy (torch warns on read-only arrays)
    views = resize_views(img, size)
    return DecodedImage(views[0].copy(), notes, views)


def check_image_path(path: Path | str) -> Path:
    """The path of an existing PNG/JPEG file or DICOM film, or a :class:`CaseError` saying what is wrong.

    A PNG/JPEG file has its header read; a DICOM film is read whole (header, pixels, windowing), since
    what makes one unusable (a lie about its bits, a missing decoder, a truncated pixel stream) is only
    found there, and it must be found before any model loads."""
    path = Path(path)
    try:
        if path.is_dir():
            raise CaseError(f"{shown(path)} is a folder; pass the image files in it (or a command that takes folders)")
        if path.exists() and not path.is_file():  # opening a FIFO would wait forever, /dev/zero never ends
            raise CaseError(f"{shown(path)} is not a regular file (a FIFO, a device or a socket); give an image file")
        if not path.is_file():
            raise CaseError(f"image not found: {shown(path)}")
    except OSError as exc:  # a name the OS refuses: too long, or a component longer than 255 bytes
        raise CaseError(f"cannot use {shown(path)} as an image path: {exc.strerror}") from None
    if is_dicom(path):
        decode_image(path)  # cached for the load that follows
        return path
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise CaseError(f"{shown(path)}: not a PNG or JPEG file, nor a DICOM film (expected one of "
                        f"{', '.join(IMAGE_SUFFIXES + (DICOM_SUFFIX,))}, or a file with the DICOM preamble)")
    with _opened(path):  # reads the header only: the image is decoded once, when the case is loaded
        pass
    return path


def check_ref(ref: str, root: Path | str | None = None, download: bool = False) -> None:
    """Raise a :class:`CaseError` for a reference that cannot be loaded, without decoding images."""
    parsed = parse_ref(ref)
    if parsed is None:
        if _LONG_REF.match(ref.strip()):
            raise CaseError(f"case {shown(ref, 40)} out of range: an index has at most 18 digits")
        if re.match(r"^\w+:\S*$", ref) and len(ref) < 256 and not Path(ref).exists():
            raise CaseError(f"bad case reference {shown(repr(ref))}: use <split>:<index> with split in {SPLITS}, or an image path")
        check_image_path(ref)
        return
    split, index = parsed
    n = len(load_split(split, root, download))
    if not 0 <= index < n:
        raise CaseError(f"case {ref} out of range: the {split} split has indices 0..{n - 1}")


def _skip_reason(path: Path) -> str | None:
    """Why a folder entry is not a case (None: it is a file to consider)."""
    if path.name.startswith("."):
        return "hidden"
    if path.is_symlink() and not path.exists():
        return "a broken link"
    if path.is_dir():
        return "a subfolder, not searched"
    if not path.is_file():
        return "not a regular file"
    return None


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name the OS refuses (too long): not a folder; check_image_path says why
        return False


def expand_folders(items: list[str]) -> list[str]:
    """Case references from command-line items: a folder becomes the PNG/JPEG files and DICOM films in it (sorted);
    a folder holding anything else, or nothing, is a :class:`CaseError`. Entries that are not cases
    (hidden files, broken links, subfolders) are skipped with one warning per folder naming each."""
    refs: list[str] = []
    for item in items:
        path = Path(item)
        if parse_ref(item) is None and _is_folder(path):
            entries = sorted(path.iterdir())
            skipped = {p: why for p in entries if (why := _skip_reason(p))}
            files = [p for p in entries if p not in skipped]
            listed = ", ".join(f"{p.name!r} ({why})" for p, why in list(skipped.items())[:5]) + (" ..." if len(skipped) > 5 else "")
            others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES and not is_dicom(p)]
            if others:
                raise CaseError(f"{path} holds files that are not PNG/JPEG images: {', '.join(others[:5])}"
                                f"{' ...' if len(others) > 5 else ''} (nor DICOM films); "
                                "move them out or pass the images one by one")
            if not files:
                raise CaseError(f"{path} holds no PNG/JPEG images" + (f" (skipped: {listed})" if skipped else "")
                                + "; no DICOM films either")
            if skipped:
                warnings.warn(f"{path}: skipped {len(skipped)} of {len(entries)} entries, not images: {listed}", stacklevel=2)
            refs.extend(str(p) for p in files)
        else:
            refs.append(item)
    return refs


def check_refs(refs: list[str], root: Path | str | None = None, download: bool = False) -> list[str]:
    """``refs`` once each is known to load (:func:`check_ref`), before anything expensive starts; a
    dataset reference in its one spelling (``test:05`` and `` test:5`` are ``test:5``), so that a case
    named twice is found to be one."""
    for ref in refs:
        check_ref(ref, root, download)
    return [case_id(*parsed) if (parsed := parse_ref(ref)) else ref for ref in refs]


def load_case(ref: str, root: Path | str | None = None, download: bool = False) -> Case:
    """Resolve ``split:index`` against the dataset, or read an image file."""
    check_ref(ref, root, download)
    parsed = parse_ref(ref)
    if parsed is None:
        decoded = decode_image(Path(ref))
        for note in decoded.notes:
            warnings.warn(note, stacklevel=2)
        return Case(case_id=str(ref), image=decoded.image, notes=tuple(decoded.notes), views=decoded.views)
    split, index = parsed
    data = load_split(split, root, download)
    return Case(case_id(split, index), np.array(data.images[index]), int(data.labels[index]), split, index)


def case_from_bytes(data: bytes, name: str) -> Case:
    """A case from the bytes of an image file (PNG, JPEG or DICOM; a caller sent them), decoded as a
    file is: ``name`` is its id."""
    decoded = decode_image(data)
    return Case(case_id=name, image=decoded.image, notes=tuple(decoded.notes), views=decoded.views)


def case_from_input(
    case_ref: str | None, image: list[list[int]] | np.ndarray | None, root: Path | str | None = None,
    download: bool = False,
) -> Case:
    """A case from a reference or from a 28x28 uint8 image given directly (what the tools take)."""
    if (case_ref is None) == (image is None):
        raise CaseError("give either a case reference (test:42 or an image path) or a 28x28 image, not both")
    if case_ref is not None:
        return load_case(case_ref, root, download)
    array = np.asarray(image)
    if array.shape != (SIZE, SIZE) or array.min() < 0 or array.max() > 255:
        raise CaseError(f"expected a {SIZE}x{SIZE} image of 0-255 values, got shape {array.shape}")
    return Case(case_id="image", image=array.astype(np.uint8))
