"""Probe folders: links, undecodable files, image modes, content fingerprints, digest index."""

from __future__ import annotations

import io
import json
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from discover.data import RobustImageFolder
from discover.data import folders as data
from discover.dissection.recording import dataset_fingerprint


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DISCOVER_CACHE", str(cache))
    return cache


def _save(path: Path, colour: tuple[int, int, int], fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), colour).save(path, format=fmt)


def _broken_png() -> bytes:
    """A PNG whose chunks and CRCs are valid (``verify()`` passes) but whose pixels stop short."""
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "PNG")
    raw, pos, chunks = buffer.getvalue(), 8, [buffer.getvalue()[:8]]
    while pos < len(raw):
        (n,) = struct.unpack(">I", raw[pos : pos + 4])
        kind, body = raw[pos + 4 : pos + 8], raw[pos + 8 : pos + 8 + n]
        pos += 12 + n
        body = body[: n // 2] if kind == b"IDAT" else body
        chunks.append(struct.pack(">I", len(body)) + kind + body)
        chunks.append(struct.pack(">I", zlib.crc32(kind + body)))
    return b"".join(chunks)


def _colours(ds: RobustImageFolder) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in ds[i][0][:, 0, 0]) for i in range(len(ds))]


def test_symlink_loop_and_links_to_listed_files_count_once(tmp_path: Path):
    root = tmp_path / "probe"
    for i in range(3):
        _save(root / "a" / f"{i}.png", (10 * i, 0, 0))
    for i in range(2):
        _save(root / "b" / f"{i}.png", (0, 10 * i + 5, 0))
    (root / "a" / "loop").symlink_to("..")  # a/loop/a/loop/... : a directory loop
    (root / "b" / "self").symlink_to(".")
    (root / "b" / "copy.png").symlink_to(root / "a" / "1.png")  # already listed under a/
    (root / "a" / "x.png").symlink_to(root / "b" / "0.png")  # listed again under b/
    outside = tmp_path / "elsewhere"
    _save(outside / "far.png", (1, 2, 3))
    (root / "b" / "far").symlink_to(outside)  # a linked folder outside root is followed

    ds = RobustImageFolder(root)
    assert len(ds) == 6 and not ds.skipped
    paths = [Path(p).relative_to(root).as_posix() for p, _ in ds.samples]
    assert paths == ["a/0.png", "a/1.png", "a/2.png", "b/0.png", "b/1.png", "b/far/far.png"]
    assert ds.targets == [0, 0, 0, 1, 1, 1]  # a/x.png -> b/0.png keeps b/0.png's own class
    assert ds.duplicates == {
        str(root / "b" / "copy.png"): str(root / "a" / "1.png"),
        str(root / "a" / "x.png"): str(root / "b" / "0.png"),
    }
    assert len(set(_colours(ds))) == 6


def test_undecodable_png_is_skipped_once_and_never_replaced(tmp_path: Path):
    root = tmp_path / "probe"
    colours = {f"{i}.png": (20 * i, 100, 200 - 20 * i) for i in range(5)}
    for name, colour in colours.items():
        _save(root / "c" / name, colour)
    (root / "c" / "2b.png").write_bytes(_broken_png())
    (root / "c" / "garbage.png").write_bytes(b"\x89PNG not really")
    with Image.open(root / "c" / "2b.png") as image:
        image.verify()  # passes the header check: it fails only when decoded

    with pytest.warns(UserWarning, match="skipped 2 unreadable") as caught:
        ds = RobustImageFolder(root)
    assert len(caught) == 1
    assert len(ds) == 5 and sorted(_colours(ds)) == sorted(colours.values())
    assert set(ds.skipped) == {str(root / "c" / "2b.png"), str(root / "c" / "garbage.png")}
    assert "truncated" in ds.skipped[str(root / "c" / "2b.png")]
    loaded = [ds[i] for i in range(len(ds))] + [ds[i] for i in range(len(ds))]  # no new skips
    assert len(loaded) == 10 and len(ds.skipped) == 2

    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        warm = RobustImageFolder(root)  # verdicts from the digest index: the same count
    assert warm.skipped == ds.skipped and warm.samples == ds.samples


def test_cli_dissect_reports_the_one_skip_count(tmp_path: Path, monkeypatch, capsys):
    from discover.cli import main
    from discover.dissection import core as dissection
    from discover.dissection.embedders import Embedder, ImageTransform

    class MeanColour(Embedder):
        name = "mean-colour"
        image_transform = ImageTransform(size=8)

        @property
        def id(self) -> str:
            return "mean-colour:v1"

        def encode_preprocessed(self, pixels: torch.Tensor) -> torch.Tensor:
            return nn.functional.normalize(pixels.mean(dim=(2, 3)), dim=1)

        def encode_texts(self, texts: list[str]) -> torch.Tensor:
            return torch.eye(3)[[["red", "green", "blue"].index(t) for t in texts]]

    monkeypatch.setattr(dissection, "build_embedder", lambda spec, **kw: MeanColour())
    root = tmp_path / "probe"
    for label, rgb in (("r", (255, 0, 0)), ("g", (0, 255, 0))):
        for i in range(4):
            _save(root / label / f"{i}.png", rgb)
    (root / "r" / "late.png").write_bytes(_broken_png())  # fails only when decoded
    (root / "g" / "bad.png").write_bytes(b"not an image")
    (root / "r" / "loop").symlink_to("..")
    concepts = tmp_path / "rgb.txt"
    concepts.write_text("red\ngreen\nblue\n")
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        code = main(
            ["dissect", "--model", "small_resnet", "--num-classes", "2", "--model-arg",
             "img_size=16", "--layers", "fc", "--probe", "imagefolder", "--probe-root",
             str(root), "--concepts", str(concepts), "--similarity", "cos",
             "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "d")]
        )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "8 images, skipped 2 unreadable image(s)" in out
    meta = json.loads((tmp_path / "d" / "dissection.json").read_text())["meta"]["probe"]
    assert meta["images"] == 8 and len(meta["skipped_unreadable"]) == 2


def test_every_image_mode_is_converted(tmp_path: Path):
    root = tmp_path / "probe" / "m"
    root.mkdir(parents=True)
    Image.new("L", (2, 2), 77).save(root / "a_grey.png")
    Image.fromarray(np.full((2, 2), 40000, dtype=np.uint16)).save(root / "b_grey16.png")
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(root / "c_palette.png", transparency=0)
    Image.new("RGBA", (2, 2), (200, 100, 0, 128)).save(root / "d_rgba.png")
    Image.new("CMYK", (2, 2), (50, 100, 150, 60)).save(root / "e_cmyk.tif")
    Image.new("LA", (2, 2), (100, 0)).save(root / "f_grey_alpha.png")

    ds = RobustImageFolder(tmp_path / "probe")
    assert [Path(p).name for p, _ in ds.samples][0] == "a_grey.png" and len(ds) == 6
    images = [ds[i][0] for i in range(len(ds))]
    assert all(im.dtype == torch.uint8 and im.shape == (3, 2, 2) for im in images)
    pixel = [tuple(int(v) for v in im[:, 1, 1]) for im in images]
    assert pixel[0] == (77, 77, 77)
    assert pixel[1] == (156,) * 3  # 40000 / 257, not clipped to 255
    assert pixel[2] == (200, 100, 50) and tuple(images[2][:, 0, 0].tolist()) == (255, 255, 255)
    assert pixel[3] == (227, 177, 127)  # half-transparent orange on white: 200 * 128 / 255 + 127
    assert pixel[4] == (157, 119, 80)  # (255 - C)(255 - K) / 255
    assert pixel[5] == (255, 255, 255)  # fully transparent grey


def test_fingerprint_follows_bytes_not_name_size_or_time(tmp_path: Path, monkeypatch):
    root = tmp_path / "probe"
    for i in range(3):
        _save(root / "c" / f"{i}.bmp", (30 * i, 0, 0), fmt="BMP")
    target = root / "c" / "1.bmp"

    def rewrite(colour: tuple[int, int, int]) -> None:
        stat = target.stat()
        _save(target, colour, fmt="BMP")  # same size: BMP is uncompressed
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert target.stat().st_size == stat.st_size
        assert target.stat().st_mtime_ns == stat.st_mtime_ns

    ds = RobustImageFolder(root)
    before = dataset_fingerprint(ds)
    assert before == ds.fingerprint() == dataset_fingerprint(RobustImageFolder(root))
    rewrite((0, 255, 0))
    assert dataset_fingerprint(ds) != before  # files fresher than the clock's resolution

    monkeypatch.setattr(data, "_RACY_NS", 0)  # now let the index remember every digest
    remembered = ds.fingerprint()
    time.sleep(0.05)
    rewrite((0, 0, 255))
    assert ds.fingerprint() != remembered  # ctime moved: the remembered digest is not used
    rewrite((0, 255, 0))
    assert ds.fingerprint() == remembered  # content, not times, decides


def test_digest_index_is_reused_and_survives_corruption(tmp_path, monkeypatch, _cache):
    monkeypatch.setattr(data, "_RACY_NS", 0)
    root = tmp_path / "probe"
    for i in range(4):
        _save(root / "c" / f"{i}.png", (40 * i, 9, 9))
    ds = RobustImageFolder(root)
    key = ds.fingerprint()
    (index,) = (_cache / "digests").glob("*.json")
    files = json.loads(index.read_text())["files"]
    assert sorted(files) == sorted(os.path.abspath(p) for p, _ in ds.samples)
    assert all(entry["error"] is None and len(entry["sha256"]) == 64 for entry in files.values())

    calls: list[str] = []
    examine = data._examine
    monkeypatch.setattr(
        data, "_examine", lambda path, decode: calls.append(path) or examine(path, decode)
    )
    assert RobustImageFolder(root).fingerprint() == key and calls == []  # warm: nothing read

    for garbage in ("{not json", "[]", '{"format": 1, "pillow": "0", "files": {}}'):
        index.write_text(garbage)
        assert RobustImageFolder(root).fingerprint() == key and len(calls) == 4
        calls.clear()
        assert sorted(json.loads(index.read_text())["files"]) == sorted(files)  # rewritten
    assert [p.name for p in index.parent.iterdir()] == [index.name]  # no temporary left over


def _huge_png(path: Path, side: int = 12000) -> Path:
    """A small file (about 17 KB) that declares ``side`` x ``side`` pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("1", (side, side)).save(path)
    return path


def test_an_image_above_the_pixel_ceiling_is_skipped_before_decoding(tmp_path: Path):
    """Issue 22: a 17 KB PNG declaring 12000 x 12000 pixels was decoded (2.6 GB). Now it is
    skipped with the reason, counted like an undecodable file, and never decoded."""
    import resource

    root = tmp_path / "probe"
    _save(root / "c" / "ok.png", (10, 20, 30))
    huge = _huge_png(root / "c" / "huge.png")
    assert huge.stat().st_size < 100_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        ds = RobustImageFolder(root)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert len(ds) == 1 and list(ds.skipped) == [str(huge)]
    assert "too large: 12000 x 12000 pixels" in ds.skipped[str(huge)]
    assert grown_mb < 300, f"checking the image cost {grown_mb:.0f} MB"
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        header_only = RobustImageFolder(root, verify="header", digest_cache=False)
    assert "12000 x 12000" in header_only.skipped[str(huge)]
    with pytest.raises(data.ImageTooLargeError, match="MAX_IMAGE_PIXELS"):
        data._read_rgb(str(huge))


def test_the_pixel_ceiling_can_be_raised(tmp_path: Path, monkeypatch):
    _huge_png(tmp_path / "p" / "c" / "big.png", side=300)
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 200 * 200)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        with pytest.raises(FileNotFoundError, match="no readable image"):
            RobustImageFolder(tmp_path / "p")
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 300 * 300)
    assert len(RobustImageFolder(tmp_path / "p")) == 1  # the verdict depends on the ceiling


def test_explain_and_the_report_refuse_an_image_above_the_ceiling(tmp_path: Path):
    from discover.explanation import read_images
    from discover.report.figures import to_pil

    huge = _huge_png(tmp_path / "huge.png")
    _save(tmp_path / "ok.png", (1, 2, 3))
    images, names, failures = read_images([tmp_path / "ok.png", huge])
    assert names == [str(tmp_path / "ok.png")] and len(images) == 1
    assert failures[str(huge)].startswith("too large: 12000 x 12000 pixels")
    with pytest.raises(ValueError, match="too large"):
        to_pil(huge)
