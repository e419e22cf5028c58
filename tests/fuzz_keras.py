"""Seeded mutations of a valid .keras archive, for tests/test_fuzz.py.

Three kinds: byte flips anywhere in the file, truncation, and JSON edits of
config.json (a field deleted, or a value replaced by one of another type).
"""

from __future__ import annotations

import copy
import json
import random
import zipfile
from pathlib import Path
from typing import Any

#: values a JSON edit puts in place of a field's value: each of another type, or extreme.
REPLACEMENTS: list[Any] = [None, 0, -1, 2**40, 1.5, float("1e308"), "", "x", "Dense", True, [], [None], {}, {"a": 1}]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a dict entry or list item inside a JSON value."""
    out: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append(prefix + (key,))
            out.extend(_paths(value, prefix + (key,)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out.append(prefix + (index,))
            out.extend(_paths(value, prefix + (index,)))
    return out


def _parent(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        node = node[step]
    return node


def mutate_config(config: Any, rng: random.Random) -> tuple[Any, str]:
    """Delete a field or change its type; returns the new config and what was done."""
    config = copy.deepcopy(config)
    path = rng.choice(_paths(config))
    parent = _parent(config, path)
    if rng.random() < 0.4:
        del parent[path[-1]]
        return config, f"delete {'/'.join(map(str, path))}"
    value = rng.choice(REPLACEMENTS)
    parent[path[-1]] = value
    return config, f"set {'/'.join(map(str, path))} = {value!r}"


def write_mutant(base: Path, dst: Path, rng: random.Random) -> str:
    """Write one mutant of ``base`` to ``dst``; returns a description (for failure messages)."""
    raw = base.read_bytes()
    kind = rng.choice(["flip", "truncate", "json", "json", "json"])
    if kind == "flip":
        data = bytearray(raw)
        positions = [rng.randrange(len(data)) for _ in range(rng.randint(1, 8))]
        for position in positions:
            data[position] ^= 1 << rng.randrange(8)
        dst.write_bytes(bytes(data))
        return f"flip bytes at {positions}"
    if kind == "truncate":
        cut = rng.randrange(len(raw))
        dst.write_bytes(raw[:cut])
        return f"truncate to {cut} bytes"
    with zipfile.ZipFile(base) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config, what = mutate_config(json.loads(members["config.json"]), rng)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(dst, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return what
