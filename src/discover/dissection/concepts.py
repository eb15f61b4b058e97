"""Concept sets: the candidate descriptions a neuron is matched against.

A concept set is a plain list of strings. The package ships the lists used by CLIP-Dissect and
DISCOVER as data under ``discover/dissection/concept_lists/`` (provenance in ``concept_lists/SOURCES.md``), and
:func:`load_concepts` reads either one of them by name or any text file with one concept per
line. Files are untrusted input: every line is kept as a plain string, nothing is evaluated.

Reading rules (applied to shipped and user files alike):

* surrounding whitespace is stripped and empty lines are dropped;
* a repeated concept is dropped after its first occurrence, so each concept is one column of
  the concept matrix ``P``, except for *class lists* (``imagenet_labels``,
  ``places365_categories``, ``shapes_classes``), where concept ``i`` must stay class ``i``:
  repeats are kept there, with a warning;
* the number of dropped lines is reported (:attr:`ConceptSet.dropped_empty`,
  :attr:`ConceptSet.dropped_duplicates`) and :attr:`ConceptSet.sha256` hashes the final list,
  so caches keyed on it notice any change of content (docs/method.md §11, pitfall 5).

Example:
    >>> from discover.dissection.concepts import load_concepts
    >>> words = load_concepts("20k")
    >>> len(words), words.concepts[:3]
    (20000, ['the', 'of', 'and'])
    >>> load_concepts("broden").dropped_duplicates
    44
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from discover._utils import Registry
from discover.errors import InputError

__all__ = [
    "ConceptSet",
    "CONCEPT_SETS",
    "register_concept_set",
    "list_concept_sets",
    "load_concepts",
    "concept_set_from_lines",
    "clean_places365_category",
]


@dataclass
class ConceptSet:
    """An ordered list of concept strings with its provenance.

    Attributes:
        concepts: the concepts, in file order.
        name: the registered name, or the file name for user files.
        source: where the list came from: a file path, or ``package:discover/dissection/concept_lists/<file>``.
        dropped_empty: blank lines dropped while reading.
        dropped_duplicates: repeated concepts dropped (always 0 for class lists).
        duplicates: the concepts that occurred more than once, dropped or kept.

    Example:
        >>> cs = concept_set_from_lines(["dog", " cat ", "", "dog"], name="pets")
        >>> cs.concepts, cs.dropped_empty, cs.dropped_duplicates
        (['dog', 'cat'], 1, 1)
    """

    concepts: list[str]
    name: str
    source: str
    dropped_empty: int = 0
    dropped_duplicates: int = 0
    duplicates: tuple[str, ...] = field(default=())

    @property
    def sha256(self) -> str:
        """SHA-256 of the final list as UTF-8 text, one concept per line, each ending in ``\\n``.

        It equals ``sha256sum`` of the cleaned file, and changes whenever a concept, the
        order or the count changes.
        """
        return hashlib.sha256("".join(f"{c}\n" for c in self.concepts).encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.concepts)

    def __iter__(self) -> Iterator[str]:
        return iter(self.concepts)

    def __getitem__(self, index: int) -> str:
        return self.concepts[index]

    def summary(self) -> str:
        """One line for logs and run metadata."""
        return (
            f"concept set {self.name!r}: {len(self)} concepts from {self.source} "
            f"(dropped {self.dropped_empty} empty, {self.dropped_duplicates} duplicate; "
            f"sha256 {self.sha256[:12]})"
        )


def concept_set_from_lines(
    lines: Iterable[str],
    *,
    name: str,
    source: str = "<memory>",
    keep_duplicates: bool = False,
) -> ConceptSet:
    """Apply the reading rules (strip, drop blanks, drop or keep repeats) to ``lines``.

    Args:
        lines: raw lines, e.g. ``text.splitlines()``.
        name: name of the set, used in messages.
        source: provenance recorded in the result.
        keep_duplicates: keep repeated entries (class lists, where position ``i`` is class
            ``i``) and warn about them instead of dropping them.

    Raises:
        ValueError: if no concept is left.

    Example:
        >>> concept_set_from_lines(["tench", "", "goldfish"], name="classes").concepts
        ['tench', 'goldfish']
    """
    concepts: list[str] = []
    seen: set[str] = set()
    repeated: dict[str, None] = {}
    dropped_empty = dropped_duplicates = 0
    for raw in lines:
        concept = raw.strip()
        if not concept:
            dropped_empty += 1
            continue
        if concept in seen:
            repeated[concept] = None
            if not keep_duplicates:
                dropped_duplicates += 1
                continue
        seen.add(concept)
        concepts.append(concept)
    if not concepts:
        raise InputError(f"concept set {name!r} is empty (source: {source})")
    if keep_duplicates and repeated:
        examples = ", ".join(map(repr, list(repeated)[:5]))
        warnings.warn(
            f"concept set {name!r} is a class list with repeated entries ({examples}); "
            "they are kept so that entry i stays class i",
            stacklevel=2,
        )
    return ConceptSet(concepts, name, source, dropped_empty, dropped_duplicates, tuple(repeated))


def _read_text(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"concept set {name!r}: {path} is not UTF-8 text ({err})") from err


def _read_file(path: Path, *, keep_duplicates: bool = False) -> ConceptSet:
    return concept_set_from_lines(
        _read_text(path, path.name).splitlines(),
        name=path.name,
        source=str(path),
        keep_duplicates=keep_duplicates,
    )


def _read_resource(filename: str, name: str, *, keep_duplicates: bool = False) -> ConceptSet:
    text = (
        resources.files("discover.dissection")
        .joinpath("concept_lists", filename)
        .read_text(encoding="utf-8")
    )
    return concept_set_from_lines(
        text.splitlines(),
        name=name,
        source=f"package:discover/dissection/concept_lists/{filename}",
        keep_duplicates=keep_duplicates,
    )


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

ConceptLoader = Callable[[], ConceptSet]
CONCEPT_SETS: Registry[ConceptLoader] = Registry("concept set")
"""Concept-set loaders by name; :func:`load_concepts` looks names up here."""


def register_concept_set(name: str) -> Callable[[ConceptLoader], ConceptLoader]:
    """Register a zero-argument loader returning a :class:`ConceptSet` under ``name``.

    Raises:
        ValueError: if ``name`` is already registered.

    Example:
        >>> @register_concept_set("colours")  # doctest: +SKIP
        ... def colours():
        ...     return concept_set_from_lines(["red", "green"], name="colours")
    """

    return CONCEPT_SETS.register(name)


def list_concept_sets() -> list[str]:
    """Registered concept-set names, sorted."""
    return CONCEPT_SETS.list()


def load_concepts(spec: str | os.PathLike[str] | ConceptSet) -> ConceptSet:
    """A registered concept set by name, or a text file with one concept per line.

    Args:
        spec: a name from :func:`list_concept_sets`, a path, or a :class:`ConceptSet`
            (returned unchanged).

    Raises:
        FileNotFoundError: ``spec`` looks like a path (has a directory part or a suffix, or
            is a ``PathLike``) but no such file exists.
        ValueError: ``spec`` is neither a registered name nor a file; or the set is empty.

    Example:
        >>> load_concepts("imagenet_labels")[0]
        'tench, Tinca tinca'
        >>> load_concepts("my_concepts.txt")  # doctest: +SKIP
    """
    if isinstance(spec, ConceptSet):
        return spec
    if isinstance(spec, str) and spec in CONCEPT_SETS:
        return CONCEPT_SETS[spec]()
    path = Path(spec).expanduser()
    if path.is_file():
        return _read_file(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"concept file {path} is a folder; expected a text file with one concept per line "
            "or a concept set name"
        )
    text = os.fspath(spec)
    if not isinstance(spec, str) or path.suffix or os.sep in text or "/" in text:
        raise FileNotFoundError(f"concept file not found: {path}")
    close = difflib.get_close_matches(text, list(CONCEPT_SETS), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise InputError(
        f"unknown concept set {text!r}.{hint} Known: "
        f"{', '.join(list_concept_sets())}; a path to a text file with one "
        "concept per line is accepted too."
    )


# --------------------------------------------------------------------------------------------
# Shipped sets
# --------------------------------------------------------------------------------------------

_WORD_FILES = {
    "3k": "3k.txt",
    "10k": "10k.txt",
    "20k": "20k.txt",
    "broden": "broden_labels_clean.txt",
    "imagenet": "imagenet.txt",
    "cifar100": "cifar100.txt",
    "places365": "places365.txt",
}


def _register_file(name: str, filename: str) -> None:
    register_concept_set(name)(lambda: _read_resource(filename, name))


for _name, _filename in _WORD_FILES.items():
    _register_file(_name, _filename)


@register_concept_set("imagenet_labels")
def _imagenet_labels() -> ConceptSet:
    """The 1,000 ImageNet-1k class strings in class-index order ("tench, Tinca tinca")."""
    concepts = _read_resource("imagenet_labels.txt", "imagenet_labels", keep_duplicates=True)
    if len(concepts) != 1000:
        raise InputError(f"imagenet_labels: expected 1000 classes, found {len(concepts)}")
    return concepts


_PLACES_LINE = re.compile(r"^/[a-z]/(?P<name>\S+)\s+(?P<index>\d+)$")


def clean_places365_category(line: str) -> str:
    """``"/a/apartment_building/outdoor 1"`` -> ``"apartment_building/outdoor"`` (docs/method.md §9.1).

    Example:
        >>> clean_places365_category("/a/apartment_building/outdoor 1")
        'apartment_building/outdoor'
    """
    match = _PLACES_LINE.match(line.strip())
    if match is None:
        raise InputError(f"not a Places365 category line ('/x/name index'): {line!r}")
    return match["name"]


@register_concept_set("places365_categories")
def _places365_categories() -> ConceptSet:
    """The 365 Places365 class names in class-index order, cleaned as in docs/method.md §9.1."""
    raw = _read_resource("categories_places365.txt", "places365_categories", keep_duplicates=True)
    indices = [int(line.rsplit(maxsplit=1)[-1]) for line in raw.concepts]
    if indices != list(range(len(indices))):
        raise InputError("places365_categories: category indices are not 0..N-1 in order")
    return concept_set_from_lines(
        [clean_places365_category(line) for line in raw.concepts],
        name=raw.name,
        source=raw.source,
        keep_duplicates=True,
    )


@register_concept_set("shapes")
def _shapes_concepts() -> ConceptSet:
    """The concept names of the default :class:`~discover.data.shapes.ShapesWorld`."""
    from discover.data.shapes import ShapesWorld

    return concept_set_from_lines(
        ShapesWorld(n=1).concept_names,
        name="shapes",
        source="discover.data.shapes.ShapesWorld.concept_names",
    )


@register_concept_set("shapes_classes")
def _shapes_classes() -> ConceptSet:
    """The default Shapes world's class names, in label order."""
    from discover.data.shapes import ShapesWorld

    return concept_set_from_lines(
        ShapesWorld(n=1).class_names,
        name="shapes_classes",
        source="discover.data.shapes.ShapesWorld.class_names",
        keep_duplicates=True,
    )
