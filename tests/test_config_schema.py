"""The one config validator (medvit.config_schema.build_config): named sections, lists of sections, YAML keys
that are no Python names, required keys; the train, pretrain and study configs all build through it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from medvit.config_schema import build_config, choices, value_range


@dataclass
class _Item:
    kind: str = field(metadata=choices("a", "b"))
    class_name: str | None = field(default=None, metadata={"key": "class"})


@dataclass
class _Source:
    manifest: str
    weight: float = field(default=1.0, metadata=value_range(0, low_open=True))


@dataclass
class _Top:
    sources: dict[str, _Source]
    items: list[_Item] = field(default_factory=list)
    extra: _Source | None = None


def test_named_sections_lists_of_sections_and_aliased_keys_are_built() -> None:
    top = build_config(_Top, {"sources": {"x": {"manifest": "x.csv"}, "y": {"manifest": "y.csv", "weight": 2}},
                              "items": [{"kind": "a", "class": "malignant"}, {"kind": "b"}]})
    assert top.sources == {"x": _Source("x.csv"), "y": _Source("y.csv", 2.0)}
    assert top.items == [_Item("a", "malignant"), _Item("b")] and top.extra is None
    assert build_config(_Top, {"sources": {}, "extra": {"manifest": "z.csv"}}).extra == _Source("z.csv")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "study key 'sources' is missing"),
        ({"sources": {"x": {}}}, "study key 'sources.x.manifest' is missing"),
        ({"sources": {"x": {"manifest": "x.csv", "wieght": 1}}}, "unknown study key 'sources.x.wieght' \\(did you mean 'sources.x.weight'\\?\\)"),
        ({"sources": {"x": {"manifest": "x.csv", "weight": 0}}}, "study key 'sources.x.weight': 0.0 is out of range"),
        ({"sources": [], "items": []}, "study key 'sources': expected a mapping of named sections"),
        ({"sources": {}, "items": [{"kind": "c"}]}, "study key 'items\\[0\\].kind': got 'c'; allowed: a, b"),
        ({"sources": {}, "items": [{"kind": "a", "klass": 1}]}, "unknown study key 'items\\[0\\].klass' \\(did you mean 'items\\[0\\].class'\\?\\)"),
    ],
)
def test_errors_name_the_key_as_written_in_the_yaml(data, message) -> None:
    with pytest.raises(ValueError, match=message):
        build_config(_Top, data, noun="study key")
