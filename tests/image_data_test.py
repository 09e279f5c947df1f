"""Tests of adiff.data.image: folder layouts (MVTec AD, Magnetic tile), MNIST idx, splits, tiles.

No JAX compilation here; budget a few seconds (real-data tests read ~50 MB of JPEGs).
"""
import gzip
import pathlib

import numpy as np
import pytest
from PIL import Image

from adiff.data import image as di


def _png(path: pathlib.Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _img(seed: int, h: int = 12, w: int = 10, c: int = 3) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)
    return arr[..., 0] if c == 1 else arr


def test_mvtec_layout(tmp_path):
    root = tmp_path / "mvtec"
    _png(root / "bottle/train/good/000.png", _img(0))
    _png(root / "bottle/train/good/001.png", _img(1))
    _png(root / "bottle/test/good/000.png", _img(2))
    _png(root / "bottle/test/broken/000.png", _img(3))
    _png(root / "bottle/test/broken/001.png", _img(4))
    mask = np.zeros((12, 10), np.uint8)
    mask[2:5, 3:7] = 255
    _png(root / "bottle/ground_truth/broken/000_mask.png", mask)  # 001 has no mask file: zeros
    train = di.load_mvtec(root, "bottle", split="train")
    assert train.images.shape == (2, 12, 10, 3) and train.images.dtype == np.uint8
    assert train.labels.tolist() == [0, 0] and train.masks is None
    np.testing.assert_array_equal(train.images[1], _img(1))
    test = di.load_mvtec(root, "bottle", split="test", size=(6, 5), grayscale=True)
    assert test.images.shape == (3, 6, 5, 1)
    assert test.kinds == ("broken", "broken", "good") and test.labels.tolist() == [1, 1, 0]
    assert test.masks.shape == (3, 6, 5) and set(np.unique(test.masks)) <= {0, 1}
    assert test.masks[0].sum() > 0 and test.masks[1].sum() == 0 and test.masks[2].sum() == 0
    # the resized mask covers (about) the same place: rows 1-2, cols 1-3 of the 6 x 5 image
    rows, cols = np.nonzero(test.masks[0])
    assert set(rows) <= {1, 2} and set(cols) <= {1, 2, 3}


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="root"):
        di.load_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        di.load_folder(tmp_path / "empty")
    _png(tmp_path / "mixed/a.png", _img(0, 8, 8))
    _png(tmp_path / "mixed/b.png", _img(1, 9, 8))
    with pytest.raises(ValueError, match="size"):
        di.load_folder(tmp_path / "mixed")
    assert di.load_folder(tmp_path / "mixed", size=4).images.shape == (2, 4, 4, 1)
    with pytest.raises(ValueError, match="split"):
        di.load_mvtec(tmp_path, "x", split="val")


def test_magnetic_tile_layout_and_split(tmp_path):
    root = tmp_path / "mt"
    for cls, n in (("MT_Free", 10), ("MT_Crack", 3)):
        for i in range(n):
            folder = root / cls / "Imgs"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_img(i, 20, 16 + i, 1)).save(folder / f"exp_{i}.jpg")
            mask = np.zeros((20, 16 + i), np.uint8)
            if cls != "MT_Free":
                mask[5:15, 4:10] = 200  # soft mask value >= 128 -> defect
                mask[0, 0] = 100  # < 128 -> normal
            Image.fromarray(mask).save(folder / f"exp_{i}.png")
    data = di.load_magnetic_tile(root, size=8, classes=("MT_Free", "MT_Crack"))
    assert data.images.shape == (13, 8, 8, 1)  # the .png masks are not read as images
    assert data.labels.sum() == 3 and data.kinds.count("MT_Crack") == 3
    assert data.masks[data.labels == 0].sum() == 0 and data.masks[data.labels == 1].sum() > 0
    assert data.masks[data.labels == 1][:, 0, 0].sum() == 0
    split = di.magnetic_tile_split(data, seed=3)
    assert split.train.shape == (7, 8, 8, 1)  # 70% of the 10 normal images
    assert len(split.test) == 6 and split.test.labels.sum() == 3
    again = di.magnetic_tile_split(data, seed=3)
    np.testing.assert_array_equal(split.train, again.train)
    other = di.magnetic_tile_split(data, seed=4)
    assert not np.array_equal(split.test.labels.argsort(), other.test.labels.argsort()) or \
        not np.array_equal(split.train, other.train)
    with pytest.raises(ValueError, match="size"):
        di.load_magnetic_tile(root, size=None)
    with pytest.raises(ValueError, match="train_fraction"):
        di.magnetic_tile_split(data, train_fraction=1.0)


def _write_idx(path, arr: np.ndarray, code: int = 0x08, compress: bool = True):
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    data = header + arr.astype(arr.dtype.newbyteorder(">") if arr.dtype.itemsize > 1 else arr.dtype).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(data)


def test_idx_and_mnist(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 3, 0, 3], np.uint8)
    _write_idx(tmp_path / "img.gz", imgs)
    _write_idx(tmp_path / "lab.gz", labels)
    x, y = di.load_mnist(tmp_path / "img.gz", tmp_path / "lab.gz")
    assert x.shape == (5, 28, 28, 1) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x[..., 0], imgs)
    np.testing.assert_array_equal(y, labels)
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    _write_idx(tmp_path / "f.idx", floats, code=0x0D, compress=False)
    np.testing.assert_array_equal(di.read_idx(tmp_path / "f.idx"), floats)
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX"):
        di.read_idx(tmp_path / "bad.idx")
    (tmp_path / "short.idx").write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 3)
    with pytest.raises(ValueError, match="needs 10"):
        di.read_idx(tmp_path / "short.idx")
    with pytest.raises(ValueError, match="match"):
        di.load_mnist(tmp_path / "img.gz", tmp_path / "f.idx")


def test_one_vs_rest_split():
    images = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1)
    labels = np.array([0] * 10 + [1] * 5 + [2] * 5)
    split = di.one_vs_rest_split(images, labels, normal_class=0, seed=1)
    assert split.train.shape[0] == 8 and set(split.train.ravel()) <= set(range(10))
    assert len(split.test) == 12 and split.test.labels.sum() == 10
    assert set(split.train.ravel()).isdisjoint(set(split.test.images.ravel()))
    with pytest.raises(ValueError, match="normal_class"):
        di.one_vs_rest_split(images, labels, normal_class=7)


def test_tiles_roundtrip_and_resize():
    x = np.random.default_rng(0).random((2, 10, 13, 1)).astype(np.float32)
    tiles, pos = di.tile_images(x, tile=4, stride=3)
    assert tiles.shape[1:] == (4, 4, 1) and pos.shape == (len(tiles), 3)
    # every pixel is covered; stitching the tiles' own values gives the image back
    np.testing.assert_allclose(di.untile_maps(tiles[..., 0], pos, (2, 10, 13)), x[..., 0], rtol=1e-6)
    with pytest.raises(ValueError, match="larger"):
        di.tile_images(x, tile=11)
    u8 = (x * 255).astype(np.uint8)
    assert di.resize_images(u8, (5, 7)).shape == (2, 5, 7, 1)
    assert di.resize_images(u8[..., 0], 6, resample="nearest").shape == (2, 6, 6)
    with pytest.raises(TypeError, match="uint8"):
        di.resize_images(x, 4)


@pytest.mark.data
def test_real_magnetic_tile_and_mnist(shared_data):
    mt = shared_data / "image" / "magnetic_tile"
    if not mt.is_dir():
        pytest.skip(f"{mt} not found")
    data = di.load_magnetic_tile(mt, size=16)
    assert data.images.shape == (1344, 16, 16, 1)
    assert int(data.labels.sum()) == 392  # README: 952 normal, 392 defective
    per_class = {k: data.kinds.count(k) for k in di.MT_CLASSES}
    assert per_class == {"MT_Free": 952, "MT_Blowhole": 115, "MT_Break": 85, "MT_Crack": 57,
                         "MT_Fray": 32, "MT_Uneven": 103}
    assert data.masks[data.labels == 0].sum() == 0
    # Fray and Uneven have by far the largest defect areas (README: 16% and 22% of pixels)
    frac = {k: data.masks[np.array(data.kinds) == k].mean() for k in ("MT_Blowhole", "MT_Fray", "MT_Uneven")}
    assert frac["MT_Fray"] > 0.05 and frac["MT_Uneven"] > 0.05 and frac["MT_Blowhole"] < 0.02
    split = di.magnetic_tile_split(data, seed=0)
    assert len(split.train) == 666 and len(split.test) == 1344 - 666
    x, y = di.load_mnist(shared_data / "image/mnist/t10k-images-idx3-ubyte.gz",
                         shared_data / "image/mnist/t10k-labels-idx1-ubyte.gz")
    assert x.shape == (10000, 28, 28, 1)
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
