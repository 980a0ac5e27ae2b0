"""Image decoding on real files written with PIL: 16-bit, alpha, palette, CMYK, EXIF orientation,
decompression bombs, tiny images, and the resize views of files of another size."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from casereview.data import CaseError, MAX_PIXELS, check_image_path, decode_image, load_case


def gradient(w: int = 64, h: int = 64) -> np.ndarray:
    """A left-to-right ramp with a brighter square: content whose orientation and contrast are checkable."""
    img = np.tile(np.linspace(20, 200, w), (h, 1))
    img[h // 4 : h // 2, w // 4 : w // 2] = 240
    return img.round().astype(np.uint8)


def reference(img: np.ndarray, folder: Path) -> np.ndarray:
    """What an 8-bit grayscale file of ``img`` decodes to."""
    return decode_image(save(Image.fromarray(img), folder / "reference.png")).image


def save(im: Image.Image, path: Path, **kwargs) -> Path:
    im.save(path, **kwargs)
    return path


def test_16bit_png_is_rescaled_by_its_value_range_not_clipped(tmp_path):
    img = gradient()
    raw = img.astype(np.uint16) * 16 + 1000  # 12-bit values with an offset, as detectors export them
    path = save(Image.fromarray(raw), tmp_path / "film16.png")
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    decoded = decode_image(path).image
    assert decoded.min() <= 5 and decoded.max() >= 250  # full range (the resize smooths the extremes), not white
    ref = reference(((img.astype(float) - img.min()) * 255 / (img.max() - img.min())).round().astype(np.uint8), tmp_path)
    assert np.abs(decoded.astype(int) - ref.astype(int)).max() <= 1


def test_constant_16bit_png_decodes_to_black_not_an_error(tmp_path):
    path = save(Image.fromarray(np.full((40, 40), 3000, np.uint16)), tmp_path / "flat16.png")
    assert (decode_image(path).image == 0).all()


def test_rgba_is_composited_on_black(tmp_path):
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, 32:, 3] = 255  # right half opaque, left half fully transparent
    out = decode_image(save(Image.fromarray(rgba, "RGBA"), tmp_path / "alpha.png")).image
    assert out[:, :13].max() == 0 and out[:, 16:].min() == 200  # transparent -> film background (black)


def test_palette_png_matches_its_rgb_rendering(tmp_path):
    rgb = np.stack([gradient()] * 3, axis=-1)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    path = save(pal, tmp_path / "pal.png")
    with Image.open(path) as im:
        assert im.mode == "P"
    expected = reference(np.array(pal.convert("L")), tmp_path)
    assert np.array_equal(decode_image(path).image, expected)


def test_cmyk_jpeg_is_not_inverted(tmp_path):
    img = gradient()
    path = save(Image.fromarray(img).convert("CMYK"), tmp_path / "cmyk.jpg", quality=95)
    with Image.open(path) as im:
        assert im.mode == "CMYK"
    out = decode_image(path).image.astype(int)
    assert np.abs(out - reference(img, tmp_path).astype(int)).mean() < 6  # brightness kept, not inverted


def test_exif_orientation_is_applied(tmp_path):
    img = gradient(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate it 90 degrees clockwise
    path = save(Image.fromarray(img), tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright = np.rot90(img, k=-1)  # what the viewer shows
    out = decode_image(path).image.astype(int)
    assert np.abs(out - reference(np.ascontiguousarray(upright), tmp_path).astype(int)).mean() < 4
    assert np.abs(out - reference(img, tmp_path).astype(int)).mean() > 20  # the unrotated reading differs


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, side: int = 100_000) -> Path:
    """A PNG declaring side x side gray pixels (10 gigapixels here) with a few bytes of data."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + _png_chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 200
    for read in (check_image_path, decode_image, lambda p: load_case(str(p))):
        with pytest.raises(CaseError, match=f"too large to be read safely \\(over {MAX_PIXELS:,} pixels"):
            read(path)


def test_just_over_the_limit_is_refused_too(tmp_path):
    side = int(MAX_PIXELS**0.5) + 1  # PIL itself would only warn here
    with pytest.raises(CaseError, match="too large"):
        check_image_path(bomb_png(tmp_path / "big.png", side))


@pytest.mark.parametrize(("content", "message"), [(b"not an image", "unreadable image"), (None, "too small")])
def test_unreadable_and_tiny_files(tmp_path, content, message):
    path = tmp_path / "x.png"
    if content is None:
        Image.fromarray(np.zeros((5, 5), np.uint8)).save(path)
    else:
        path.write_bytes(content)
    with pytest.raises(CaseError, match=message):
        load_case(str(path))


def test_28px_file_is_read_as_is_without_views(tmp_path):
    img = gradient(28, 28)
    decoded = decode_image(save(Image.fromarray(img), tmp_path / "small.png"))
    assert np.array_equal(decoded.image, img) and decoded.views is None and decoded.notes == []


def test_files_of_another_size_carry_their_resize_views(tmp_path):
    path = save(Image.fromarray(gradient(96, 80)), tmp_path / "film.png")
    decoded = decode_image(path)
    assert decoded.views.shape == (5, 28, 28) and decoded.views.dtype == np.uint8
    assert np.array_equal(decoded.views[0], decoded.image)  # the canonical view is the image
    assert not all(np.array_equal(v, decoded.image) for v in decoded.views[1:])  # the others do differ
    assert "96x80 L" in decoded.notes[0]
    case = load_case(str(path))
    assert np.array_equal(case.views, decoded.views) and case.label is None


@pytest.mark.parametrize("size, mode, steps", [
    ((28, 28), "L", None),  # a MedMNIST-style file: nothing done, nothing said
    ((28, 28), "RGB", "converted from RGB to 8-bit grayscale;"),
    ((28, 28), "I;16", "converted from I;16 to 8-bit grayscale (rescaled by its value range);"),
    ((56, 56), "L", "resized to 28x28 (bicubic);"),
    ((40, 28), "L", "centre-cropped to 28x28;"),
    ((64, 48), "RGB", "converted from RGB to 8-bit grayscale, centre-cropped to 48x48, resized to 28x28 (bicubic);"),
])
def test_the_note_says_what_was_done_to_the_file_and_only_that(tmp_path, size, mode, steps):
    film = Image.fromarray(gradient(*size))
    film = film.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(film).astype(np.uint16) * 200)
    notes = decode_image(save(film, tmp_path / "film.png")).notes
    w, h = size
    if steps is None:
        assert notes == []
    else:
        assert len(notes) == 1 and notes[0].startswith(f"image file ({w}x{h} {mode}) {steps} the classifier")
