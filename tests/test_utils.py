import pytest

from discover._utils import Registry, check_options, csv_text, read_json


def test_registry_register_get_list_and_suggestions():
    things = Registry("thing", normalize=str.lower)

    @things.register("Alpha")
    def alpha(): ...

    things.register("beta", 2)
    assert things.get("ALPHA") is alpha and things["beta"] == 2 and "Alpha" in things
    assert things.list() == ["alpha", "beta"] and things.list("b*") == ["beta"]
    assert list(things) == ["alpha", "beta"] and len(things) == 2
    with pytest.raises(ValueError, match=r"unknown thing 'alhpa'. Did you mean 'alpha'\? Known"):
        things.get("alhpa")
    with pytest.raises(ValueError, match="a thing named 'beta' is already registered"):
        things.register("beta", 3)
    things.register("beta", 3, overwrite=True)
    copy = things.copy()
    assert things.unregister("beta") == 3 and "beta" not in things and copy["beta"] == 3


def test_every_named_choice_uses_one_registry_class():
    from discover.data import DATASETS
    from discover.demo import DEMO_DATA
    from discover.dissection.concepts import CONCEPT_SETS
    from discover.dissection.embedders import EMBEDDERS
    from discover.dissection.similarity import SIMILARITIES
    from discover.evaluation.planted import VARIANTS
    from discover.nn.models import MODELS
    from discover.training.recipes import RECIPES

    for registry in (
        CONCEPT_SETS,
        DATASETS,
        DEMO_DATA,
        EMBEDDERS,
        MODELS,
        VARIANTS,
        RECIPES,
        SIMILARITIES,
    ):
        assert isinstance(registry, Registry) and len(registry) > 0, registry


def test_check_options_and_helpers(tmp_path):
    def fn(x, *, top_k: int = 5, scale: float = 1.0, name: str | None = None): ...

    check_options(fn, {"top_k": 3, "scale": 2, "name": None}, "f")
    with pytest.raises(ValueError, match="f: option top_k expects int, got 'x'"):
        check_options(fn, {"top_k": "x"}, "f")
    with pytest.raises(ValueError, match=r"f: unknown option 'sclae' \(did you mean scale\?\)"):
        check_options(fn, {"sclae": 1}, "f")
    assert csv_text([{"a": 1, "b": None}]).splitlines() == ["a,b", "1,"]
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(ValueError, match="x.json is not valid JSON"):
        read_json(tmp_path / "x.json", "settings file")
