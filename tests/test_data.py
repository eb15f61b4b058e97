"""Tests for discover.data: the Shapes world, Fashion-MNIST, image folders, registry, transforms."""

from __future__ import annotations

import gzip
import itertools
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from discover import data
from discover.data import (
    COLOURS,
    FACTORS,
    POSITIONS,
    SHAPES,
    TEXTURES,
    DataConfig,
    FashionMNIST,
    RobustImageFolder,
    ShapesConfig,
    ShapesWorld,
    build_dataset,
    build_transforms,
    fashion_mnist,
    read_idx,
    register_dataset,
)

# ---------------------------------------------------------------------------------------------
# Shapes world
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world() -> ShapesWorld:
    return ShapesWorld(n=400, seed=7, return_concepts=True)


def test_shapes_is_deterministic_per_seed_split_and_index():
    a = ShapesWorld(n=50, seed=3)
    b = ShapesWorld(n=5000, seed=3)  # a different length must not change item i
    order_b = [b[i][0] for i in (9, 2, 30)]  # nor the access order
    for img, i in zip(order_b, (9, 2, 30), strict=True):
        assert torch.equal(a[i][0], img)
    assert a[4][0].dtype == torch.uint8 and a[4][0].shape == (3, 64, 64)
    assert not torch.equal(a[4][0], ShapesWorld(n=50, seed=4)[4][0])
    assert not torch.equal(a[4][0], ShapesWorld(n=50, seed=3, split="val")[4][0])
    assert torch.equal(a[-1][0], a[49][0])
    with pytest.raises(IndexError):
        a[50]


def test_shapes_same_images_in_worker_processes():
    ds = ShapesWorld(n=16, seed=11, image_size=32)
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    images = torch.cat([batch[0] for batch in loader])
    assert torch.equal(images, torch.stack([ds[i][0] for i in range(16)]))


def test_shapes_factor_vocabularies():
    cfg = ShapesConfig()
    assert len(SHAPES) >= 8 and len(cfg.shapes) >= 8
    assert len(cfg.colours) >= 8 and len(cfg.background_colours) >= 8
    assert len(cfg.textures) >= 5 and len(cfg.sizes) >= 2 and len(cfg.positions) >= 9
    assert all(name in COLOURS for name in cfg.colours)
    with pytest.raises(ValueError, match="shapes"):
        ShapesConfig(shapes=("circle", "blob"))
    with pytest.raises(ValueError, match="split"):
        ShapesWorld(n=1, split="dev")


def test_shapes_concepts_match_factors_and_labels(world: ShapesWorld):
    groups = world.concept_groups
    assert list(groups) == list(FACTORS)
    assert world.concept_names == list(itertools.chain(*groups.values()))
    for i in range(60):
        _, label, concepts = world[i]
        f = world.factors(i)
        assert label == world.class_names.index(f.shape)
        expected = {
            f.shape,
            f.colour,
            f"{f.background} background",
            TEXTURES[f.texture],
            f.size,
            f.position,
        }
        active = {world.concept_names[j] for j in concepts.nonzero().flatten().tolist()}
        assert active == expected
        offset = 0
        for names in groups.values():  # exactly one concept per group
            assert concepts[offset : offset + len(names)].sum() == 1
            offset += len(names)
        assert f.background != f.colour


def test_shapes_concepts_table_matches_items(world: ShapesWorld):
    table = world.concepts_table()
    assert table.shape == (len(world), len(world.concept_names))
    assert torch.equal(table[:40], torch.stack([world[i][2] for i in range(40)]))
    assert torch.equal(world.concepts_table([5, 1]), table[[5, 1]])
    assert torch.equal(world.concepts(17), table[17])
    labels = world.factor_codes()[:, 0]
    assert labels.tolist() == [world[i][1] for i in range(len(world))]
    assert set(labels.tolist()) == set(range(len(world.class_names)))  # every class occurs


def test_shapes_object_pixels_have_the_object_colour(world: ShapesWorld):
    for i in range(30):
        image, mask, f = world[i][0], world.mask(i), world.factors(i)
        solid = image[:, mask == 1].T
        assert len(solid) > 0
        assert (solid == torch.tensor(COLOURS[f.colour], dtype=torch.uint8)).all()


@pytest.mark.parametrize("size", [64, 32])
def test_shapes_mask_follows_size_and_position(size: int):
    ds = ShapesWorld(n=300, seed=1, image_size=size)
    area = {"small": [], "large": []}
    for i in range(len(ds)):
        mask, f = ds.mask(i), ds.factors(i)
        area[f.size].append(float(mask.sum()))
        ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        cx, cy = float((mask * xs).sum() / mask.sum()), float((mask * ys).sum() / mask.sum())
        assert abs(cx - f.centre[0]) < 1e-3 and abs(cy - f.centre[1]) < 1e-3
        fx, fy = POSITIONS[f.position]  # 0.25 / 0.5 / 0.75 -> third 0 / 1 / 2
        third_x, third_y = int((cx + 0.5) * 3 // size), int((cy + 0.5) * 3 // size)
        assert (third_x, third_y) == (round(fx * 4) - 1, round(fy * 4) - 1), (i, f)
    assert np.mean(area["large"]) > 1.5 * np.mean(area["small"])


@pytest.mark.parametrize("size", [64, 32])
def test_shapes_are_distinct_silhouettes(size: int):
    fixed = dict(
        n=1,
        image_size=size,
        sizes=("large",),
        positions=("center",),
        size_jitter=0.0,
        position_jitter=0.0,
    )
    shapes = ShapesConfig().shapes
    masks = {s: ShapesWorld(shapes=(s,), **fixed).mask(0) for s in shapes}
    for a, b in itertools.combinations(shapes, 2):
        inter = torch.minimum(masks[a], masks[b]).sum()
        union = torch.maximum(masks[a], masks[b]).sum()
        assert inter / union < 0.85, (a, b, float(inter / union))


def test_shapes_fixed_factors_and_registry_build():
    ds = build_dataset(
        "shapes",
        "test",
        n=20,
        textures="plain",
        sizes=("small",),
        image_size=32,
        return_concepts=True,
    )
    assert isinstance(ds, ShapesWorld) and ds.split == "test"
    assert ds.concept_groups["texture"] == ["plain background"]
    assert {ds.factors(i).size for i in range(20)} == {"small"}
    image, _, concepts = ds[0]
    assert image.shape == (3, 32, 32) and concepts.shape == (len(ds.concept_names),)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> None:
    """Write ``array`` as an idx file: magic (0, 0, dtype code, ndim), big-endian dims, data."""
    dtype = {0x08: ">u1", 0x0C: ">i4"}[code]
    payload = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(dtype).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)


@pytest.fixture()
def tiny_fmnist(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n, gz in (("train", 7, True), ("t10k", 3, False)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        arrays[prefix] = (images, labels)
    return tmp_path, arrays


def test_read_idx_roundtrip_and_errors(tmp_path: Path):
    values = np.arange(-6, 6, dtype=np.int32).reshape(3, 4) * 100_000
    write_idx(tmp_path / "ints.idx.gz", values, code=0x0C)
    out = read_idx(tmp_path / "ints.idx.gz")
    assert out.dtype == np.int32 and np.array_equal(out, values)
    (tmp_path / "junk").write_bytes(b"\x12\x34\x56\x78rest")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "junk")
    write_idx(tmp_path / "short", np.zeros((4, 5), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(ValueError, match="expected"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_reads_idx_files(tiny_fmnist, monkeypatch):
    root, arrays = tiny_fmnist
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_DIR", root / "absent")
    train = FashionMNIST(root, split="train", download=False)
    assert len(train) == 7 and train.class_names[0] == "T-shirt/top"
    for i in range(7):
        image, label = train[i]
        assert image.dtype == torch.uint8 and image.shape == (1, 28, 28)
        assert np.array_equal(image[0].numpy(), arrays["train"][0][i])
        assert label == arrays["train"][1][i]
    test = build_dataset("fashion-mnist", "val", root=root, download=False)
    assert len(test) == 3 and test[2][1] == arrays["t10k"][1][2]
    tf = build_transforms(DataConfig(input_size=(3, 32, 32)))
    assert FashionMNIST(root, split="test", transform=tf, download=False)[0][0].shape == (3, 32, 32)


def test_fashion_mnist_fingerprint_follows_content(tiny_fmnist, monkeypatch):
    from torch.utils.data import Subset

    from discover.dissection.recording import dataset_fingerprint

    root, _ = tiny_fmnist
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_DIR", root / "absent")
    test = FashionMNIST(root, split="test", download=False)
    key = dataset_fingerprint(Subset(test, range(2)))  # a probe subset caches too
    assert key == dataset_fingerprint(Subset(FashionMNIST(root, "test", download=False), [0, 1]))
    assert key != dataset_fingerprint(Subset(test, [1, 2]))
    test.data[0, 0, 0] ^= 1
    assert key != dataset_fingerprint(Subset(test, range(2)))
    assert test.fingerprint() != FashionMNIST(root, split="train", download=False).fingerprint()


def test_fashion_mnist_missing_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_DIR", tmp_path / "debian")
    with pytest.raises(FileNotFoundError) as err:
        FashionMNIST(tmp_path / "mine", split="train", download=False)
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "train-images-idx3-ubyte" in message
    assert str(tmp_path / "mine") in message and str(tmp_path / "debian") in message


@pytest.mark.skipif(
    not (data.FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").exists(),
    reason=f"Debian package dataset-fashion-mnist not installed ({data.FASHION_MNIST_DIR} missing)",
)
def test_fashion_mnist_debian_package():
    test = FashionMNIST(split="test", download=False)
    assert len(test) == 10_000 and test.source == data.FASHION_MNIST_DIR
    image, label = test[0]
    assert image.shape == (1, 28, 28) and test.class_names[label] == "ankle boot"
    assert torch.bincount(test.targets).tolist() == [1000] * 10


# ---------------------------------------------------------------------------------------------
# Image folders and torchvision datasets
# ---------------------------------------------------------------------------------------------


def _save(path: Path, colour: tuple[int, int, int], fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), colour).save(path, format=fmt)


def test_imagefolder_skips_and_counts_corrupt_files(tmp_path: Path):
    _save(tmp_path / "cat" / "a.png", (255, 0, 0))
    _save(tmp_path / "cat" / "b.png", (0, 255, 0))
    _save(tmp_path / "dog" / "c.jpg", (0, 0, 255), fmt="JPEG")
    (tmp_path / "dog" / "garbage.png").write_bytes(b"this is not an image")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg")
    jpeg = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "dog" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])

    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        ds = RobustImageFolder(tmp_path)  # every file decoded once, up front
    assert ds.class_names == ["cat", "dog"] and len(ds) == 3
    assert list(ds.skipped) == [str(tmp_path / "dog" / n) for n in ("garbage.png", "truncated.jpg")]
    items = [ds[i] for i in range(len(ds))]
    assert all(img.dtype == torch.uint8 and img.shape == (3, 10, 12) for img, _ in items)

    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        header = RobustImageFolder(tmp_path, verify="header")  # the truncated JPEG passes
    assert len(header) == 4
    with pytest.raises(data.UnreadableImageError, match="truncated.jpg.*verify='full'"):
        [header[i] for i in range(len(header))]  # never replaced by a neighbour
    assert len(header.skipped) == 1


def test_imagefolder_missing_or_empty_paths(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="one sub-folder per class") as err:
        RobustImageFolder(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)
    with pytest.raises(FileNotFoundError, match="one sub-folder per class"):
        RobustImageFolder(tmp_path)  # exists, but holds no class folders
    _save(tmp_path / "train" / "cat" / "a.png", (1, 2, 3))
    assert len(build_dataset("imagefolder", "train", root=tmp_path)) == 1
    with pytest.raises(FileNotFoundError, match="found train"):
        build_dataset("imagefolder", "val", root=tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "places365", "imagenet"])
def test_torchvision_datasets_absent(name: str, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=name) as err:
        build_dataset(name, "val", root=tmp_path)
    assert str(tmp_path) in str(err.value) and "layout" in str(err.value)
    with pytest.raises(ValueError, match="root"):
        build_dataset(name, "val")


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_registry_suggests_close_names():
    assert {
        "shapes",
        "fashion-mnist",
        "imagefolder",
        "cifar10",
        "cifar100",
        "places365",
        "imagenet",
    } <= set(data.list_datasets())
    with pytest.raises(ValueError, match="Did you mean 'fashion-mnist'"):
        build_dataset("fashion_mnst")
    with pytest.raises(ValueError, match="'shapes'"):
        build_dataset("shape")
    with pytest.raises(ValueError, match="split"):
        build_dataset("shapes", "training")
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("shapes")(lambda **kw: None)


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------


def test_data_config_roundtrip_and_from_model():
    from discover.nn.networks import SmallResNet

    cfg = DataConfig.from_model(SmallResNet(in_chans=1, img_size=28), padding=2, hflip=0.5)
    assert cfg.input_size == (1, 28, 28) and cfg.mean == (0.5,) and cfg.std == (0.25,)
    assert cfg.padding == 2 and cfg.interpolation == "bilinear"
    as_dict = cfg.to_dict()
    assert as_dict["input_size"] == [1, 28, 28]
    assert DataConfig.from_dict(as_dict) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        DataConfig.from_dict({**as_dict, "colour": "red"})
    with pytest.raises(ValueError, match="channel"):
        DataConfig(input_size=(3, 8, 8), mean=(0.1, 0.2))
    with pytest.raises(ValueError, match="pretrained_cfg"):
        DataConfig.from_model(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("input_size", [(3, 64, 64), (1, 28, 28), (3, 32, 48)])
def test_transforms_output_configured_shape(train: bool, input_size):
    cfg = DataConfig(input_size=input_size, crop_pct=0.875, hflip=0.5, padding=4, scale=(0.5, 1.0))
    tf = build_transforms(cfg, train=train)
    inputs = [
        torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8),
        torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8),
        Image.new("RGB", (40, 30), (10, 200, 30)),
        Image.new("L", (20, 20), 128),
    ]
    for x in inputs:
        y = tf(x)
        assert type(y) is torch.Tensor and y.dtype == torch.float32
        assert tuple(y.shape) == input_size


def test_transforms_normalise_and_convert_channels():
    grey = torch.full((1, 8, 8), 255, dtype=torch.uint8)
    y = build_transforms(DataConfig(input_size=(3, 8, 8), mean=(0.5,), std=(0.25,)))(grey)
    assert torch.allclose(y, torch.full((3, 8, 8), 2.0))  # (1 - 0.5) / 0.25
    rgb = torch.zeros(3, 8, 8, dtype=torch.uint8)
    y = build_transforms(DataConfig(input_size=(1, 8, 8), mean=(0.0,), std=(1.0,)))(rgb)
    assert y.shape == (1, 8, 8) and torch.all(y == 0)


def test_shapes_feed_a_model_through_its_transform():
    from discover.nn.networks import SmallResNet

    model = SmallResNet(num_classes=10, in_chans=1, img_size=32).eval()
    tf = build_transforms(DataConfig.from_model(model))
    loader = DataLoader(ShapesWorld(n=8, seed=0, transform=tf), batch_size=8)
    images, labels = next(iter(loader))
    assert images.shape == (8, 1, 32, 32) and labels.shape == (8,)
    with torch.no_grad():
        assert model(images).shape == (8, 10)


# -- batched augmentation ----------------------------------------------------------------------
def _normalised(images, cfg):
    mean = torch.tensor(cfg.mean).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def test_batch_augment_without_randomness_equals_the_per_image_pipeline():
    from discover.data import BatchAugment

    cfg = DataConfig(input_size=(3, 12, 12), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    images = torch.randint(0, 256, (5, 3, 12, 12), dtype=torch.uint8)
    per_image = torch.stack([build_transforms(cfg, train=True)(x) for x in images])
    items = torch.stack([build_transforms(cfg, train=True, batch_augment=True)(x) for x in images])
    assert items.dtype == torch.uint8 and torch.equal(items, images)
    assert torch.allclose(BatchAugment(cfg)(items), per_image, atol=1e-6)


def test_batch_augment_crops_are_padded_crops_with_uniform_offsets():
    from discover.data import BatchAugment

    p, size = 2, 6
    cfg = DataConfig(input_size=(1, size, size), padding=p)
    images = torch.randint(1, 256, (400, 1, size, size), dtype=torch.uint8)  # no zero pixels
    torch.manual_seed(0)
    out = BatchAugment(cfg)(images)
    padded = torch.nn.functional.pad(_normalised(images, cfg), (p, p, p, p), value=-2.0)
    counts = torch.zeros(2 * p + 1, 2 * p + 1)
    for i in range(len(images)):
        matches = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.allclose(out[i], padded[i, :, dy : dy + size, dx : dx + size], atol=1e-6)
        ]
        assert len(matches) == 1, f"image {i} is not one padded crop"
        counts[matches[0]] += 1
    expected = len(images) / counts.numel()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 52.6  # chi-square, 24 degrees of freedom, p = 0.001
    torch.manual_seed(0)
    assert torch.equal(BatchAugment(cfg)(images), out)  # seeded: repeats


def test_batch_augment_flips_with_the_configured_probability():
    from discover.data import BatchAugment

    cfg = DataConfig(input_size=(1, 4, 4), hflip=0.5)
    images = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(2000, 1, 1, 1)
    torch.manual_seed(1)
    out = BatchAugment(cfg)(images)
    flipped = torch.isclose(out, _normalised(images.flip(-1), cfg)).flatten(1).all(1)
    kept = torch.isclose(out, _normalised(images, cfg)).flatten(1).all(1)
    assert bool((flipped ^ kept).all())
    assert 0.45 < flipped.float().mean() < 0.55
    assert torch.equal(BatchAugment(cfg, train=False)(images), _normalised(images, cfg))


def test_batch_augment_refuses_what_it_cannot_augment():
    from discover.data import BatchAugment

    augment = BatchAugment(DataConfig(input_size=(1, 8, 8)))
    with pytest.raises(
        ValueError, match=r"expected a uint8 batch \(B, 1, 8, 8\), got torch.float32"
    ):
        augment(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="got torch.uint8 \\(2, 3, 8, 8\\)"):
        augment(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_shapes_concept_masks_cover_the_object_or_the_background():
    """Issue 23: pixel masks of every Shapes concept, checked against the rendered image."""
    from discover.data.shapes import COLOURS, POSITIONS, ShapesWorld

    ds = ShapesWorld(n=12, image_size=48, split="val", textures=("plain",))
    for index in range(len(ds)):
        concepts, masks = ds.concept_masks(index)
        factors = ds.factors(index)
        names = [ds.concept_names[c] for c in concepts]
        assert names == [
            factors.shape, factors.colour, f"{factors.background} background",
            "plain background", factors.size, factors.position,
        ]  # fmt: skip
        assert torch.equal(ds.concepts(index).nonzero().flatten(), concepts.sort().values)
        obj, background = masks[0], masks[2]
        assert torch.equal(obj, masks[1]) and torch.equal(obj, masks[4])
        assert torch.equal(obj, masks[5]) and torch.equal(background, masks[3])
        assert bool((obj ^ background).all()) and 0 < int(obj.sum()) < obj.numel()
        image = ds[index][0].permute(1, 2, 0).float()
        colour = torch.tensor(COLOURS[factors.colour], dtype=torch.float32)
        paper = torch.tensor(COLOURS[factors.background], dtype=torch.float32)
        near_object = (image - colour).norm(dim=-1) < (image - paper).norm(dim=-1)
        coverage = ds.mask(index)
        assert torch.equal(obj, coverage >= 0.5)
        whole = (coverage == 0) | (coverage == 1)  # away from the anti-aliased edge
        assert torch.equal(near_object[whole], obj[whole])  # the mask is what one sees
        ys, xs = obj.nonzero(as_tuple=True)
        fx, fy = POSITIONS[factors.position]
        centre = torch.tensor([xs.float().mean() + 0.5, ys.float().mean() + 0.5]) / 48
        assert (centre - torch.tensor([fx, fy])).abs().max() < 0.15, (factors, centre)
    areas = {}
    for index in range(len(ds)):
        areas.setdefault(ds.factors(index).size, []).append(
            int(ds.concept_masks(index)[1][0].sum())
        )
    means = {size: np.mean(a) for size, a in areas.items()}
    assert sorted(means, key=means.get) == [s for s in ("small", "medium", "large") if s in means]
