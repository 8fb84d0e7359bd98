"""YAML parsed the safe way, but with source lines kept and duplicate keys found instead of silently merged.

Plain ``yaml.safe_load`` forgets where things were and keeps the last of two equal keys, so a rule file with
``threshold:`` twice loads "fine". Here every mapping is a :class:`LocatedMap` (a ``dict`` that also knows its
line, each key's line and its duplicate keys) and every sequence a :class:`LocatedSeq` (a ``list`` that knows
each item's line). Values are otherwise exactly what ``yaml.safe_load`` returns. Lines are 1-based.

>>> [doc] = parse_documents("a: 1\\nb: [x, y]\\na: 2\\n")
>>> doc.value["b"], doc.value.key_lines["b"], doc.value.duplicates
(['x', 'y'], 2, [('a', 3, 1)])
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any, NamedTuple

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from rules.exceptions import RollguardError

__all__ = [
    "LocatedMap", "LocatedSeq", "YamlDocument", "YamlSyntaxError", "MAX_EXPANDED_NODES", "parse_documents", "line_of",
    "describe", "did_you_mean",
]  # fmt: skip

# Rule files are small; a document whose aliases expand beyond this is an alias bomb ("billion laughs").
MAX_EXPANDED_NODES = 100_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlSyntaxError(RollguardError):
    """The text is not YAML (or is hostile YAML); ``line`` is 1-based or None, ``problem`` says what to fix."""

    def __init__(self, line: int | None, problem: str) -> None:
        super().__init__(f"line {line}: {problem}" if line else problem)
        self.line = line
        self.problem = problem


class LocatedMap(dict):
    """A mapping that remembers its start ``line``, each key's line and its ``(key, line, first line)`` duplicates."""

    line: int
    key_lines: dict[Any, int]
    duplicates: list[tuple[Any, int, int]]


class LocatedSeq(list):
    """A sequence that remembers its start ``line`` and each item's line."""

    line: int
    item_lines: list[int]


class YamlDocument(NamedTuple):
    """One document: its ``value``, its start ``line``, and every mapping in it that has duplicate keys."""

    value: Any
    line: int
    maps_with_duplicates: list[LocatedMap]


def line_of(container: Any, key: Any) -> int | None:
    """The line of ``container[key]`` (a key of a map, an index of a sequence), else of the container itself.

    >>> doc = parse_documents("x:\\n  - 1\\n  - 2\\n")[0].value
    >>> line_of(doc, "x"), line_of(doc["x"], 1), line_of(42, 0)
    (1, 3, None)
    """
    if isinstance(container, LocatedMap):
        return container.key_lines.get(key, container.line)
    if isinstance(container, LocatedSeq) and isinstance(key, int) and 0 <= key < len(container.item_lines):
        return container.item_lines[key]
    return getattr(container, "line", None)


class _Loader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.maps_with_duplicates: list[LocatedMap] = []


def _construct_map(loader: _Loader, node: MappingNode):  # type: ignore[no-untyped-def]
    data = LocatedMap()
    data.line, data.key_lines, data.duplicates = node.start_mark.line + 1, {}, []
    yield data  # yielded before filling, as SafeConstructor does, so that recursive aliases resolve
    first_lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        # Only the mapping's own keys: keys merged in with ``<<: *anchor`` are there to be overridden.
        if isinstance(key_node, ScalarNode) and key_node.tag != _MERGE_TAG:
            key = loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first_lines:
                data.duplicates.append((key, line, first_lines[key]))
            else:
                first_lines[key] = line
    if data.duplicates:
        loader.maps_with_duplicates.append(data)
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, "found unhashable key", key_node.start_mark
            ) from None
        data[key] = loader.construct_object(value_node)
        data.key_lines[key] = key_node.start_mark.line + 1


def _construct_seq(loader: _Loader, node: SequenceNode):  # type: ignore[no-untyped-def]
    data = LocatedSeq()
    data.line, data.item_lines = node.start_mark.line + 1, [item.start_mark.line + 1 for item in node.value]
    yield data
    data.extend(loader.construct_sequence(node))


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def _expanded_size(node: yaml.Node, memo: dict[int, int], active: set[int]) -> int:
    """Nodes in the document with every alias expanded, computed without expanding anything."""
    if id(node) in memo:
        return memo[id(node)]
    if id(node) in active:
        raise YamlSyntaxError(node.start_mark.line + 1, "a YAML alias refers to a node that contains it (recursion)")
    active.add(id(node))
    children = node.value if isinstance(node, SequenceNode) else []
    if isinstance(node, MappingNode):
        children = [child for pair in node.value for child in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, memo, active)
        if total > MAX_EXPANDED_NODES:
            raise YamlSyntaxError(
                node.start_mark.line + 1, f"the document expands to over {MAX_EXPANDED_NODES} YAML nodes via aliases"
            )
    active.discard(id(node))
    memo[id(node)] = total
    return total


def parse_documents(text: str) -> list[YamlDocument]:
    """Each YAML document in ``text``; raises :class:`YamlSyntaxError` and nothing else.

    Mappings with duplicate keys are returned (the last value wins, as in PyYAML) with ``duplicates`` filled in;
    the caller decides how to report them.

    >>> parse_documents("op: >=\\n")
    Traceback (most recent call last):
    ...
    rules.located_yaml.YamlSyntaxError: line 1: expected chomping or indentation indicators, but found '=' \
(while scanning a block scalar); an unquoted > or | starts a block scalar: quote it, e.g. op: ">="
    """
    loader = None
    documents = []
    try:
        loader = _Loader(text)  # inside the try: the reader rejects control characters right here
        while loader.check_node():
            node = loader.get_node()
            _expanded_size(node, {}, set())
            loader.maps_with_duplicates = []
            value = loader.construct_document(node)
            documents.append(YamlDocument(value, node.start_mark.line + 1, loader.maps_with_duplicates))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = f"{exc.problem}" + (f" ({exc.context})" if exc.context else "")
        if exc.context == "while scanning a block scalar":
            problem += '; an unquoted > or | starts a block scalar: quote it, e.g. op: ">="'
        raise YamlSyntaxError(mark.line + 1 if mark else None, problem) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise YamlSyntaxError(line, f"{exc.reason} (character #x{exc.character:04x})") from None
    except RecursionError:
        raise YamlSyntaxError(None, "nested too deeply") from None
    except YamlSyntaxError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyYAML raises bare ValueError etc. for e.g. the date 2024-13-45
        raise YamlSyntaxError(None, f"{type(exc).__name__}: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return documents


def describe(value: Any) -> str:
    """``value`` as a message shows it: its YAML kind, and the value itself when it is short."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else f"boolean {str(value).lower()}"
    if isinstance(value, str):
        text = repr(value)
        return f"string {text if len(text) <= 60 else text[:56] + '...' + text[0]}"
    if isinstance(value, int):
        return f"integer {value}" if abs(value) < 10**20 else "a huge integer"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return "a mapping" if isinstance(value, dict) else f"a {type(value).__name__}"


def did_you_mean(word: Any, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing: the tail of an unknown-key message."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
