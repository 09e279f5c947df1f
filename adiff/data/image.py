"""Image anomaly-detection data: folder readers (MVTec AD, Magnetic tile), MNIST idx, resize, tiles.

Every loader takes the path of the user's copy of a dataset (nothing is downloaded) and returns
an `ImageSet`: images [N, H, W, C] uint8, optional pixel masks [N, H, W] uint8 0/1, image labels
[N] int (1 = anomalous) and the file paths. Images of different sizes are resized (PIL) to
`size` = (height, width) or a single int; without `size` they must all have one size.

Layouts:
- A plain folder of images, optional mask folder (masks matched by file stem + `mask_suffix`).
- MVTec AD / VisA-style per category: `<root>/<category>/train/good/*.png`,
  `<root>/<category>/test/<defect>/*.png`, `<root>/<category>/ground_truth/<defect>/<stem>_mask.png`
  (`good` = normal, no mask).
- Magnetic-tile defects: `<root>/MT_<class>/Imgs/<id>.jpg` with the same-name `.png` pixel mask
  (soft edges, thresholded at 128); `MT_Free` is normal, every other class anomalous.
- MNIST idx files (optionally gzip-compressed): `read_idx`, `load_mnist`.

Protocol helpers: `magnetic_tile_split` (train on a random fraction of MT_Free, test on the rest
plus all defects) and `one_vs_rest_split` (MNIST: train on a fraction of one digit, test on the
rest of it plus all other digits). `tile_images` / `untile_maps` cut large images into
overlapping tiles and stitch per-tile anomaly maps back.
"""
from __future__ import annotations

import gzip
import os
import pathlib
from typing import Optional, Sequence, Tuple

import flax.struct
import numpy as np

__all__ = [
    "ImageSet", "Split", "IMAGE_EXTENSIONS", "MT_CLASSES",
    "read_image", "resize_images", "load_folder", "load_mvtec", "load_magnetic_tile",
    "read_idx", "load_mnist", "magnetic_tile_split", "one_vs_rest_split",
    "tile_images", "untile_maps",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MT_CLASSES = ("MT_Free", "MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")


@flax.struct.dataclass
class ImageSet:
    """Images with optional pixel masks and image labels.

    Attributes:
      images: [N, H, W, C] uint8.
      masks: [N, H, W] uint8 0/1 pixel masks (1 = defect), or None.
      labels: [N] int64, 1 = anomalous image.
      paths: N file paths (or "" where the data has no files), static.
      kinds: N category names (e.g. the defect type; "good" for normal images), static.
    """

    images: np.ndarray  # [N, H, W, C] uint8
    masks: Optional[np.ndarray]  # [N, H, W] uint8 or None
    labels: np.ndarray  # [N] int64
    paths: Tuple[str, ...] = flax.struct.field(pytree_node=False, default=())
    kinds: Tuple[str, ...] = flax.struct.field(pytree_node=False, default=())

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: np.ndarray) -> "ImageSet":
        """The samples at `index` (integer indices or a boolean mask)."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        pick = lambda seq: tuple(seq[i] for i in index) if seq else ()
        return ImageSet(images=self.images[index],
                        masks=None if self.masks is None else self.masks[index],
                        labels=self.labels[index], paths=pick(self.paths), kinds=pick(self.kinds))


@flax.struct.dataclass
class Split:
    """A train/test split.

    Attributes:
      train: normal training images [N_train, H, W, C] uint8.
      test: the test ImageSet (images, masks, labels, kinds).
    """

    train: np.ndarray  # [N_train, H, W, C] uint8
    test: ImageSet


# ------------------------------------------------------------------------------------------------
# reading and resizing
# ------------------------------------------------------------------------------------------------
def _as_size(size) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be None, an int or (height, width); got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive; got {size!r}")
    return h, w


def _check_dir(path, name: str = "root") -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.is_dir():
        raise ValueError(f"{name} must be an existing directory; got {str(path)!r}")
    return path


def read_image(path: str | os.PathLike, *, size=None, grayscale: bool = True,
               resample: str = "bilinear") -> np.ndarray:
    """Reads one image file with PIL as [H, W, C] uint8 (C = 1 grayscale or 3 RGB).

    Args:
      path: image file.
      size: None (keep), an int or (height, width) to resize to.
      grayscale: convert to one channel ("L") instead of RGB.
      resample: "bilinear", "bicubic", "nearest" or "lanczos" (PIL filters; "bilinear" and
        "bicubic" antialias when shrinking).

    Returns:
      [H, W, C] uint8 array.
    """
    from PIL import Image  # pylint: disable=g-import-not-at-top
    size = _as_size(size)
    with Image.open(path) as im:
        im = im.convert("L" if grayscale else "RGB")
        if size is not None and (im.height, im.width) != size:
            im = im.resize((size[1], size[0]), _pil_filter(resample))
        arr = np.asarray(im, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _pil_filter(resample: str):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    filters = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
               "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
    if resample not in filters:
        raise ValueError(f"resample must be one of {tuple(filters)}; got {resample!r}")
    return filters[resample]


def _read_mask(path: pathlib.Path, size, shape_hw: Tuple[int, int]) -> np.ndarray:
    """Reads a mask file, resizes it (bilinear on the soft mask) and thresholds at 128 -> 0/1."""
    m = read_image(path, size=size if size is not None else shape_hw, grayscale=True)[..., 0]
    return (m >= 128).astype(np.uint8)


def resize_images(images: np.ndarray, size, *, resample: str = "bilinear") -> np.ndarray:
    """Resizes images [N, H, W, C] (uint8) or masks [N, H, W] with PIL.

    Args:
      images: [N, H, W, C] or [N, H, W] uint8 array.
      size: an int or (height, width).
      resample: a PIL filter name (see `read_image`); use "nearest" for label masks.

    Returns:
      The resized array, same rank and dtype.
    """
    from PIL import Image  # pylint: disable=g-import-not-at-top
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"images must have shape [N, H, W, C] or [N, H, W]; got {images.shape}")
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8; got dtype {images.dtype}")
    h, w = _as_size(size)
    filt = _pil_filter(resample)
    out = []
    for img in images:
        chans = img[..., None] if img.ndim == 2 else img
        planes = [np.asarray(Image.fromarray(chans[..., c]).resize((w, h), filt), np.uint8)
                  for c in range(chans.shape[-1])]
        res = np.stack(planes, axis=-1)
        out.append(res[..., 0] if img.ndim == 2 else res)
    return np.stack(out)


def _list_images(folder: pathlib.Path, extensions=IMAGE_EXTENSIONS) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)


def _stack(arrays: list[np.ndarray], paths: Sequence[pathlib.Path]) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images have different sizes {sorted(shapes)[:4]} (e.g. {str(paths[0])!r}); "
                         "pass size=(height, width) to resize them")
    return np.stack(arrays)


# ------------------------------------------------------------------------------------------------
# folder layouts
# ------------------------------------------------------------------------------------------------
def load_folder(root: str | os.PathLike, *, size=None, grayscale: bool = True,
                mask_root: str | os.PathLike | None = None, mask_suffix: str = "",
                mask_extension: str = ".png", label: int = 0, kind: str = "",
                extensions: Sequence[str] = IMAGE_EXTENSIONS) -> ImageSet:
    """Reads every image of a folder (not recursive), with optional same-stem masks.

    Args:
      root: folder of images.
      size: None, an int or (height, width) to resize to.
      grayscale: one channel (True) or RGB.
      mask_root: optional folder of masks: the mask of `<stem>.<ext>` is
        `<mask_root>/<stem><mask_suffix><mask_extension>`; a missing mask means an all-zero mask.
        Files in `root` whose name ends with mask_suffix + mask_extension are not read as images
        when mask_root is root itself (Magnetic-tile layout).
      mask_suffix: suffix of mask stems (MVTec AD: "_mask").
      mask_extension: file extension of masks.
      label: the image label given to every image (1 = anomalous).
      kind: the category name given to every image.
      extensions: image file extensions to read (lower case).

    Returns:
      An ImageSet (masks None without mask_root).
    """
    root = _check_dir(root)
    size = _as_size(size)
    files = _list_images(root, tuple(e.lower() for e in extensions))
    mroot = None if mask_root is None else _check_dir(mask_root, "mask_root")
    if mroot is not None and mroot.resolve() == root.resolve():
        # Masks live next to the images (Magnetic tile): a file that is another file's mask is
        # not an image.
        stems = {}
        for p in files:
            stems.setdefault(p.stem, []).append(p)

        def is_mask(p):
            if p.suffix.lower() != mask_extension.lower():
                return False
            if mask_suffix:
                return p.stem.endswith(mask_suffix) and p.stem[:-len(mask_suffix)] in stems
            return len(stems[p.stem]) > 1  # "a.jpg" + "a.png": the .png is the mask

        files = [p for p in files if not is_mask(p)]
    if not files:
        raise ValueError(f"no images with extensions {tuple(extensions)} in {str(root)!r}")
    images, masks = [], []
    for p in files:
        img = read_image(p, size=size, grayscale=grayscale)
        images.append(img)
        if mroot is not None:
            mp = mroot / f"{p.stem}{mask_suffix}{mask_extension}"
            masks.append(_read_mask(mp, size, img.shape[:2]) if mp.is_file()
                         else np.zeros(img.shape[:2], np.uint8))
    imgs = _stack(images, files)
    return ImageSet(images=imgs, masks=None if mroot is None else np.stack(masks),
                    labels=np.full((len(files),), int(label), np.int64),
                    paths=tuple(str(p) for p in files), kinds=(kind,) * len(files))


def concat(sets: Sequence[ImageSet]) -> ImageSet:
    """Concatenates ImageSets (masks: None only if every set has none; else zeros fill in)."""
    if not sets:
        raise ValueError("sets must hold at least one ImageSet")
    any_mask = any(s.masks is not None for s in sets)
    masks = None
    if any_mask:
        masks = np.concatenate([s.masks if s.masks is not None
                                else np.zeros(s.images.shape[:3], np.uint8) for s in sets])
    return ImageSet(images=np.concatenate([s.images for s in sets]), masks=masks,
                    labels=np.concatenate([s.labels for s in sets]),
                    paths=sum((s.paths for s in sets), ()), kinds=sum((s.kinds for s in sets), ()))


def load_mvtec(root: str | os.PathLike, category: str, *, split: str = "test", size=None,
               grayscale: bool = False) -> ImageSet:
    """Reads one category of MVTec AD (or the same layout, e.g. VisA converted to it).

    Args:
      root: dataset root holding `<category>/train`, `<category>/test`, `<category>/ground_truth`.
      category: e.g. "bottle".
      split: "train" (train/good only) or "test" (every test sub-folder; "good" = normal).
      size: None, an int or (height, width).
      grayscale: one channel instead of RGB.

    Returns:
      An ImageSet; for split="test", masks from ground_truth/<defect>/<stem>_mask.png (zeros for
      "good"), labels 1 for every defect folder, kinds = folder names.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    base = _check_dir(pathlib.Path(root) / category, "root/category")
    split_dir = _check_dir(base / split, f"root/category/{split}")
    size = _as_size(size)
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir())
    if split == "train":
        folders = [p for p in folders if p.name == "good"]
    if not folders:
        raise ValueError(f"no sub-folders in {str(split_dir)!r}")
    sets = []
    for folder in folders:
        good = folder.name == "good"
        gt = base / "ground_truth" / folder.name
        sets.append(load_folder(folder, size=size, grayscale=grayscale,
                                mask_root=None if good or split == "train" or not gt.is_dir() else gt,
                                mask_suffix="_mask", label=0 if good else 1, kind=folder.name))
    return concat(sets)


def load_magnetic_tile(root: str | os.PathLike, *, size=64, classes: Sequence[str] = MT_CLASSES,
                       ) -> ImageSet:
    """Reads the Magnetic-tile defect set: `MT_<class>/Imgs/<id>.jpg` + same-name `.png` masks.

    Args:
      root: folder holding the MT_* folders.
      size: an int or (height, width); the originals have different sizes, so a size is needed.
      classes: the MT_* folders to read; "MT_Free" is normal (label 0), the rest anomalous.

    Returns:
      An ImageSet [N, h, w, 1] with masks thresholded at 128 after resizing, kinds = class names.
    """
    root = _check_dir(root)
    size = _as_size(size)
    if size is None:
        raise ValueError("size must be given for Magnetic tile (its images differ in size)")
    sets = []
    for cls in classes:
        folder = _check_dir(root / cls / "Imgs", f"root/{cls}/Imgs")
        sets.append(load_folder(folder, size=size, grayscale=True, mask_root=folder,
                                mask_extension=".png", extensions=(".jpg", ".jpeg"),
                                label=0 if cls == "MT_Free" else 1, kind=cls))
    return concat(sets)


# ------------------------------------------------------------------------------------------------
# MNIST idx
# ------------------------------------------------------------------------------------------------
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (LeCun's MNIST format), gzip-compressed when the name ends in .gz.

    Returns:
      The array with the shape and dtype of its header (native byte order).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"path must be an existing file; got {str(path)!r}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{str(path)!r} is not an IDX file (bad magic number {data[:4]!r})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{str(path)!r} is truncated (header needs {header} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(shape)) if shape else 1
    if len(data) - header != count * dtype.itemsize:
        raise ValueError(f"{str(path)!r} holds {len(data) - header} data bytes; its header "
                         f"{shape} needs {count * dtype.itemsize}")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def load_mnist(images_path: str | os.PathLike, labels_path: str | os.PathLike
               ) -> Tuple[np.ndarray, np.ndarray]:
    """Reads MNIST idx files: images [N, 28, 28, 1] uint8 and labels [N] int64."""
    images = read_idx(images_path)
    labels = read_idx(labels_path).astype(np.int64)
    if images.ndim != 3:
        raise ValueError(f"the images file must hold [N, H, W]; got shape {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels shape {labels.shape} does not match {images.shape[0]} images")
    return images.astype(np.uint8)[..., None], labels


# ------------------------------------------------------------------------------------------------
# protocol splits
# ------------------------------------------------------------------------------------------------
def magnetic_tile_split(data: ImageSet, *, seed: int = 0, train_fraction: float = 0.7) -> Split:
    """Train on a random `train_fraction` of the normal images (seeded), test on the rest + defects.

    Args:
      data: an ImageSet with labels (0 = normal), e.g. from `load_magnetic_tile`.
      seed: seed of the permutation of the normal images (np.random.default_rng).
      train_fraction: fraction of normal images used for training, in (0, 1).

    Returns:
      Split(train [N_train, H, W, C] uint8, test ImageSet).
    """
    if not 0.0 < float(train_fraction) < 1.0:
        raise ValueError(f"train_fraction must lie in (0, 1); got {train_fraction!r}")
    normal = np.flatnonzero(data.labels == 0)
    if normal.size < 2:
        raise ValueError(f"need at least 2 normal images; got {normal.size}")
    perm = np.random.default_rng(seed).permutation(normal)
    n_train = min(max(1, int(round(train_fraction * normal.size))), normal.size - 1)
    train_idx = np.sort(perm[:n_train])
    test_idx = np.sort(np.concatenate([perm[n_train:], np.flatnonzero(data.labels != 0)]))
    return Split(train=data.images[train_idx], test=data.subset(test_idx))


def one_vs_rest_split(images: np.ndarray, labels: np.ndarray, *, normal_class: int, seed: int = 0,
                      train_fraction: float = 0.8) -> Split:
    """One-vs-rest: train on `train_fraction` of class `normal_class`, test on its rest + all others.

    Args:
      images: [N, H, W, C] uint8.
      labels: [N] class labels.
      normal_class: the normal class.
      seed: seed of the permutation of the normal class.
      train_fraction: in (0, 1).

    Returns:
      Split; the test labels are 1 for every other class, kinds are the class names as strings.
    """
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},); got {labels.shape}")
    if not 0.0 < float(train_fraction) < 1.0:
        raise ValueError(f"train_fraction must lie in (0, 1); got {train_fraction!r}")
    normal = np.flatnonzero(labels == normal_class)
    if normal.size < 2:
        raise ValueError(f"normal_class={normal_class!r} has {normal.size} images; need >= 2")
    perm = np.random.default_rng(seed).permutation(normal)
    n_train = min(max(1, int(round(train_fraction * normal.size))), normal.size - 1)
    train_idx = np.sort(perm[:n_train])
    test_idx = np.setdiff1d(np.arange(len(images)), train_idx)
    test = ImageSet(images=images[test_idx], masks=None,
                    labels=(labels[test_idx] != normal_class).astype(np.int64),
                    paths=(), kinds=tuple(str(v) for v in labels[test_idx]))
    return Split(train=images[train_idx], test=test)


# ------------------------------------------------------------------------------------------------
# tiling
# ------------------------------------------------------------------------------------------------
def _tile_starts(length: int, tile: int, stride: int) -> list[int]:
    if tile > length:
        raise ValueError(f"tile {tile} is larger than the image side {length}")
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)  # the last tile is flush with the border
    return starts


def tile_images(images: np.ndarray, *, tile: int, stride: Optional[int] = None
                ) -> Tuple[np.ndarray, np.ndarray]:
    """Cuts images [N, H, W, C] into square tiles covering every pixel.

    Args:
      images: [N, H, W, C] array.
      tile: tile side in pixels (<= H and W).
      stride: step between tiles (default: tile, i.e. no overlap except the flush last tile).

    Returns:
      (tiles [N * T, tile, tile, C], positions [N * T, 3] int (image index, top, left)).
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape [N, H, W, C]; got {images.shape}")
    stride = tile if stride is None else stride
    if tile < 1 or stride < 1:
        raise ValueError(f"tile and stride must be >= 1; got tile={tile}, stride={stride}")
    n, h, w, _ = images.shape
    tops, lefts = _tile_starts(h, tile, stride), _tile_starts(w, tile, stride)
    tiles, pos = [], []
    for i in range(n):
        for t in tops:
            for l in lefts:
                tiles.append(images[i, t:t + tile, l:l + tile])
                pos.append((i, t, l))
    return np.stack(tiles), np.asarray(pos, np.int64)


def untile_maps(tile_maps: np.ndarray, positions: np.ndarray, shape: Tuple[int, int, int]
                ) -> np.ndarray:
    """Stitches per-tile maps [M, t, t] back into [N, H, W], averaging where tiles overlap.

    Args:
      tile_maps: [M, t, t] maps of the tiles from `tile_images`.
      positions: [M, 3] (image index, top, left) from `tile_images`.
      shape: (N, H, W) of the output.

    Returns:
      [N, H, W] float32 maps.
    """
    tile_maps = np.asarray(tile_maps, np.float32)
    positions = np.asarray(positions)
    if tile_maps.ndim != 3 or positions.shape != (tile_maps.shape[0], 3):
        raise ValueError(f"tile_maps [M, t, t] and positions [M, 3] do not match: "
                         f"{tile_maps.shape}, {positions.shape}")
    out = np.zeros(shape, np.float32)
    count = np.zeros(shape, np.float32)
    t = tile_maps.shape[1]
    for m, (i, top, left) in zip(tile_maps, positions):
        out[i, top:top + t, left:left + t] += m
        count[i, top:top + t, left:left + t] += 1.0
    return out / np.maximum(count, 1.0)
