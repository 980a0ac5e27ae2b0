"""Data loading, augmentation and case references on the real PneumoniaMNIST file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from casereview.data import CaseError, load_case
from casereview.training.augment import augment_batch
from casereview.data import DATA_FILE, DataError, data_file, load_split, subset_indices
from casereview.training.data import make_loader, prepare_batch


@pytest.mark.parametrize(("split", "n", "n_pneumonia"), [("train", 4708, 3494), ("val", 524, 389), ("test", 624, 390)])
def test_splits_have_official_sizes(data_root, split, n, n_pneumonia):
    s = load_split(split, data_root)
    assert s.images.shape == (n, 28, 28) and s.images.dtype == np.uint8
    assert s.labels.shape == (n,) and int(s.labels.sum()) == n_pneumonia


def test_splits_read_as_medmnist_reads_them(data_root):
    """The data layer reads medmnist's file without importing medmnist; it must read what medmnist reads."""
    import medmnist

    assert data_file(None) == Path(medmnist.info.DEFAULT_ROOT) / DATA_FILE
    for split in ("train", "val", "test"):
        ds = medmnist.PneumoniaMNIST(split=split, root=str(data_root), download=False, size=28)
        ours = load_split(split, data_root)
        assert np.array_equal(ours.images, ds.imgs) and np.array_equal(ours.labels, ds.labels.reshape(-1))


def test_loader_batches_uint8_and_prepare_normalises(data_root):
    loader = make_loader(load_split("val", data_root), batch_size=64, limit=100)
    x, y = next(iter(loader))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.uint8 and y.shape == (64,)
    z = prepare_batch(x)
    assert z.dtype == torch.float32 and abs(float(z.mean())) < 1.0  # roughly centred by the train statistics


def test_subset_is_random_not_a_prefix_and_keeps_both_classes(data_root):
    train = load_split("train", data_root)  # the shared copy is grouped by class
    idx = subset_indices(len(train), 300)
    assert len(idx) == 300 and len(np.unique(idx)) == 300
    assert 0 < train.labels[idx].mean() < 1


def test_augmentation_keeps_shape_and_range_and_is_seeded(data_root):
    x = torch.from_numpy(load_split("val", data_root).images[:32].copy()).unsqueeze(1).float() / 255
    a = augment_batch(x, torch.Generator().manual_seed(1))
    b = augment_batch(x, torch.Generator().manual_seed(1))
    c = augment_batch(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a, x)  # it does change the images
    # per-sample parameters: two copies of the same image come out different
    twins = augment_batch(x[:1].repeat(2, 1, 1, 1), torch.Generator().manual_seed(0))
    assert not torch.allclose(twins[0], twins[1])


def test_missing_data_root_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="CASEREVIEW_DATA_ROOT"):
        load_split("test", tmp_path / "nowhere", download=False)


def test_corrupt_npz_is_a_clear_error(tmp_path):
    (tmp_path / "pneumoniamnist.npz").write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match="not a readable"):
        load_split("val", tmp_path, download=False)


def test_unknown_split():
    with pytest.raises(DataError, match="unknown split"):
        load_split("holdout")


def test_case_refs(data_root):
    case = load_case("test:5", data_root)
    assert case.case_id == "test:5" and case.image.shape == (28, 28)
    assert case.label == load_split("test", data_root).labels[5]
    assert np.array_equal(case.image, load_split("test", data_root).images[5])
    with pytest.raises(CaseError, match="out of range"):
        load_case("test:624", data_root)
    with pytest.raises(CaseError, match="bad case reference"):
        load_case("holdout:3", data_root)


def test_image_files_become_medmnist_style(tmp_path):
    rgb = np.zeros((300, 200, 3), dtype=np.uint8)
    rgb[:, :, 0] = 200
    Image.fromarray(rgb).save(tmp_path / "wide.png")
    Image.fromarray(rgb).save(tmp_path / "x.jpg")
    # the note says what was done, only that: this RGB file was converted, cropped and resized
    with pytest.warns(UserWarning, match=r"converted from RGB to 8-bit grayscale, centre-cropped to 200x200, resized to 28x28"):
        img = load_case(str(tmp_path / "wide.png")).image
    assert img.shape == (28, 28) and img.dtype == np.uint8
    with pytest.warns(UserWarning, match="resized to 28x28"):
        assert load_case(str(tmp_path / "x.jpg")).image.shape == (28, 28)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(CaseError, match="unreadable"):
        load_case(str(tmp_path / "broken.png"))
    with pytest.raises(CaseError, match="not found"):
        load_case(str(tmp_path / "missing.png"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CaseError, match="not a PNG or JPEG"):
        load_case(str(tmp_path / "notes.txt"))
