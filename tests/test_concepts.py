"""Tests for discover.dissection.concepts: shipped concept sets, file reading rules, registry, hashing."""

from __future__ import annotations

import hashlib
import warnings

import pytest

from discover.data import ShapesWorld
from discover.dissection.concepts import (
    CONCEPT_SETS,
    ConceptSet,
    clean_places365_category,
    concept_set_from_lines,
    list_concept_sets,
    load_concepts,
    register_concept_set,
)

# size after dropping blanks and repeats; broden_labels_clean.txt repeats 44 labels
SHIPPED = {
    "3k": 3000,
    "10k": 9894,
    "20k": 20000,
    "broden": 1153,
    "imagenet_labels": 1000,
    "imagenet": 4751,
    "cifar100": 892,
    "places365": 2544,
    "places365_categories": 365,
}


@pytest.mark.parametrize("name, size", sorted(SHIPPED.items()))
def test_shipped_sets(name: str, size: int) -> None:
    concepts = load_concepts(name)
    assert len(concepts) == size
    assert concepts.name == name
    assert concepts.source.startswith("package:discover/dissection/concept_lists/")
    assert all(c == c.strip() and c for c in concepts)
    assert len(set(concepts)) == size  # no shipped class list repeats an entry
    assert concepts.dropped_empty == 0


def test_registry_lists_all_names() -> None:
    assert set(SHIPPED) | {"shapes", "shapes_classes"} <= set(list_concept_sets())


def test_broden_drops_repeated_labels() -> None:
    broden = load_concepts("broden")
    assert broden.dropped_duplicates == 44 == len(broden.duplicates)
    assert broden.concepts[0] == "wine cellar-bottle storage"


def test_imagenet_labels_follow_timm_class_order() -> None:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    timm_names = [info.index_to_description(i) for i in range(1000)]
    labels = load_concepts("imagenet_labels").concepts
    assert labels[0] == "tench, Tinca tinca"
    differ = {i: (labels[i], timm_names[i]) for i in range(1000) if labels[i] != timm_names[i]}
    # timm names both cranes plain "crane"; the shipped list tells them apart
    assert differ == {134: ("crane, bird", "crane"), 517: ("crane, machine", "crane")}


def test_places365_categories_are_cleaned_in_index_order() -> None:
    places = load_concepts("places365_categories")
    assert places[0] == "airfield"
    assert places[8] == "apartment_building/outdoor"
    assert places[201] == "kennel/outdoor"
    assert (
        clean_places365_category("/a/apartment_building/outdoor 1") == "apartment_building/outdoor"
    )
    with pytest.raises(ValueError, match="not a Places365 category line"):
        clean_places365_category("airfield")


def test_shapes_sets_match_the_shapes_world() -> None:
    world = ShapesWorld(n=1)
    assert load_concepts("shapes").concepts == world.concept_names
    assert load_concepts("shapes_classes").concepts == world.class_names


def test_reading_rules_and_counts(tmp_path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text(
        "\ufeffdog\n  cat  \n\n\t\ndog\nbird\r\ncat\n__import__('os').system('x')\n",
        encoding="utf-8",
    )
    concepts = load_concepts(path)
    assert concepts.concepts == ["dog", "cat", "bird", "__import__('os').system('x')"]
    assert (concepts.dropped_empty, concepts.dropped_duplicates) == (2, 2)
    assert concepts.duplicates == ("dog", "cat")
    assert concepts.name == "mine.txt" and concepts.source == str(path)
    assert load_concepts(str(path)).concepts == concepts.concepts
    assert "dropped 2 empty, 2 duplicate" in concepts.summary()


def test_class_lists_keep_repeats_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="repeated entries"):
        classes = concept_set_from_lines(
            ["crane", "dog", "crane"], name="cls", keep_duplicates=True
        )
    assert classes.concepts == ["crane", "dog", "crane"]
    assert classes.dropped_duplicates == 0 and classes.duplicates == ("crane",)


def test_sha256_hashes_content(tmp_path) -> None:
    first = concept_set_from_lines(["dog", "cat"], name="a")
    assert first.sha256 == hashlib.sha256(b"dog\ncat\n").hexdigest()
    assert concept_set_from_lines([" dog", "", "cat", "cat"], name="b").sha256 == first.sha256
    assert concept_set_from_lines(["cat", "dog"], name="a").sha256 != first.sha256
    assert concept_set_from_lines(["dog", "cats"], name="a").sha256 != first.sha256

    path = tmp_path / "c.txt"
    path.write_text("dog\ncat\n")
    before = load_concepts(path).sha256
    path.write_text("dog\ncat\nbird\n")
    assert load_concepts(path).sha256 != before


def test_unknown_name_suggests_and_mentions_paths() -> None:
    with pytest.raises(ValueError, match=r"Did you mean '20k'.*path to a text file"):
        load_concepts("20K")


def test_missing_file_names_the_path(tmp_path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_concepts(str(missing))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_concepts(missing)


def test_empty_sets_raise(tmp_path) -> None:
    path = tmp_path / "blank.txt"
    path.write_text("\n   \n\t\n")
    with pytest.raises(ValueError, match="concept set 'blank.txt' is empty"):
        load_concepts(path)
    with pytest.raises(ValueError, match="is empty"):
        concept_set_from_lines([], name="x")


def test_non_utf8_file_raises(tmp_path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        load_concepts(path)


def test_register_concept_set() -> None:
    name = "test-colours"
    try:

        @register_concept_set(name)
        def colours() -> ConceptSet:
            return concept_set_from_lines(["red", "green"], name=name)

        assert load_concepts(name).concepts == ["red", "green"]
        with pytest.raises(ValueError, match="already registered"):
            register_concept_set(name)(colours)
    finally:
        CONCEPT_SETS.unregister(name)


def test_concept_set_passes_through_and_behaves_like_a_list() -> None:
    concepts = concept_set_from_lines(["a", "b"], name="x")
    assert load_concepts(concepts) is concepts
    assert len(concepts) == 2 and list(concepts) == ["a", "b"] and concepts[1] == "b"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_concepts("imagenet_labels")  # no repeats, so no warning
