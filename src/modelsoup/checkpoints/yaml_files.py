"""YAML read in bounded memory and time, whatever its aliases.

A YAML alias repeats a node without repeating its text, so 471 bytes of nested aliases
("billion laughs") expand to more nodes than memory holds. `load_all` composes the node
graph first (linear in the text), counts the nodes the document expands to, sharing
nothing, by one memoized pass over the graph, and refuses a document over
`MAX_NODES` before constructing any value. Construction is PyYAML's safe loader (or a
subclass given by the caller, e.g. one that records ``!function`` tags).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SoupError

MAX_NODES = 1_000_000  # nodes a document may expand to (a 7B model's config has ~10^3)
MAX_BYTES = 16 * 2**20  # the largest YAML file read


def _children(node: Any) -> list[Any]:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    return []


def expanded_size(node: Any) -> int:
    """The number of nodes ``node`` expands to, an alias counted each time it occurs (a
    recursive alias once), capped at `MAX_NODES` + 1: one pass over the node graph."""
    memo: dict[int, int | None] = {}  # None: on the current path (a recursive alias)
    stack: list[tuple[Any, bool]] = [(node, False)]
    while stack:
        n, done = stack.pop()
        if done:
            total = 1 + sum(memo.get(id(c)) or 1 for c in _children(n))
            memo[id(n)] = min(total, MAX_NODES + 1)
        elif id(n) not in memo:
            memo[id(n)] = None
            stack.append((n, True))
            stack.extend((c, False) for c in _children(n) if id(c) not in memo)
    return memo[id(node)] or 1


def load_all(text: str, source: str | Path, loader: Any = None) -> list[Any]:
    """Every document of ``text``, or `SoupError` naming ``source`` when the text is not
    YAML or a document expands beyond `MAX_NODES` nodes."""
    import yaml

    cls = loader or yaml.SafeLoader
    docs = []
    try:
        parser = cls(text)
        try:
            while parser.check_node():
                node = parser.get_node()
                size = expanded_size(node)
                if size > MAX_NODES:
                    raise SoupError(
                        f"{source}: the YAML holds over {MAX_NODES:,} values (an alias, "
                        "*name, counted each time it is used); a configuration this large is "
                        "not one modelsoup reads: check for runaway aliases or repeated entries"
                    )
                docs.append(parser.construct_document(node))
        finally:
            parser.dispose()
    except (yaml.YAMLError, RecursionError) as e:
        raise SoupError(f"{source}: not valid YAML: {str(e)[:300]}") from e
    return docs


def read_yaml(path: str | Path, loader: Any = None) -> list[Any]:
    """The documents of the YAML file ``path`` (see `load_all`); `SoupError` naming the
    file when it cannot be read, is not a regular file or is over `MAX_BYTES`."""
    path = Path(path)
    try:
        if not path.is_file():
            raise SoupError(f"{path}: not a file")
        if path.stat().st_size > MAX_BYTES:
            raise SoupError(f"{path}: over {MAX_BYTES >> 20} MB, too large for a YAML file")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SoupError(f"{path}: cannot read it: {e}") from e
    return load_all(text, path, loader)
