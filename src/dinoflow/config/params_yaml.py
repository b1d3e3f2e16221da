"""Reading a params file (or a `-S` value) as YAML, with the hostile cases refused up front.

- size: at most `MAX_PARAMS_BYTES` are read (params.yaml is a few KB); a directory, a device
  that never ends, binary or non-UTF-8 bytes get a ConfigError, not a traceback;
- aliases: YAML anchors let 300 bytes describe a billion nodes. The document is composed into
  its node graph (aliases stay shared references, so this is linear in the file), the size it
  would have once expanded is counted on that graph, and anything over `MAX_YAML_NODES` or
  deeper than `MAX_YAML_DEPTH` is refused before a single Python object is built;
- duplicate keys in one mapping are an error naming the key and both lines (PyYAML silently
  keeps the last one); keys brought in by a `<<` merge may still be overridden, as YAML intends;
- only the safe YAML tags (no Python objects).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from dinoflow.errors import ConfigError

MAX_PARAMS_BYTES = 1 << 20  # 1 MiB
MAX_YAML_NODES = 100_000  # scalars + collections after alias expansion (params.yaml: ~200)
MAX_YAML_DEPTH = 32  # nesting levels (params.yaml: 4)
MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (lines reported 1-based)."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG or not isinstance(key_node, ScalarNode):
                    continue
                key = self.construct_object(key_node, deep=False)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: PyYAML's own error names it
                if first is not None:
                    where = f"lines {first} and {line}" if first != line else f"twice on line {line}"
                    raise ConfigError(
                        f"{key_node.start_mark.name}: key {str(key)[:100]!r} appears twice in one mapping "
                        f"({where}); keep one"
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _check_graph(root: Node, origin: str) -> None:
    """Refuse recursive aliases, nesting over MAX_YAML_DEPTH and expansions over MAX_YAML_NODES."""
    size: dict[int, int] = {}
    state: dict[int, int] = {}  # 1 = on the current path, 2 = done
    stack: list[tuple[Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, children_done = stack.pop()
        key = id(node)
        if children_done:
            kids = _children(node)
            size[key] = min(MAX_YAML_NODES + 1, 1 + sum(size[id(k)] for k in kids))
            state[key] = 2
            continue
        if state.get(key) == 2:
            continue
        if state.get(key) == 1:
            raise ConfigError(
                f"{origin}: a YAML alias refers to itself (recursive anchor near line {node.start_mark.line + 1})"
            )
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(
                f"{origin}: nested deeper than {MAX_YAML_DEPTH} levels (near line {node.start_mark.line + 1})"
            )
        state[key] = 1
        stack.append((node, depth, True))
        for kid in _children(node):
            if state.get(id(kid)) == 1:
                raise ConfigError(
                    f"{origin}: a YAML alias refers to itself (recursive anchor near line {kid.start_mark.line + 1})"
                )
            if state.get(id(kid)) != 2:
                stack.append((kid, depth + 1, False))
    if size[id(root)] > MAX_YAML_NODES:
        raise ConfigError(
            f"{origin}: the YAML expands to more than {MAX_YAML_NODES:,} values (anchors and aliases multiply); "
            "a params file needs a few hundred"
        )


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def parse_yaml(text: str, origin: str) -> Any:
    """YAML `text` → Python objects, or ConfigError (`origin` names the file or override)."""
    if len(text) > MAX_PARAMS_BYTES:
        raise ConfigError(
            f"{origin}: {len(text):,} characters is more than a params file may hold ({MAX_PARAMS_BYTES:,})"
        )
    if "\x00" in text:
        raise ConfigError(f"{origin}: holds NUL bytes; this is a binary file, not YAML text")
    loader = _StrictLoader(text)
    loader.name = origin
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node, origin)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{origin}: not valid YAML{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{origin}: not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{origin}: nested too deeply to read (at most {MAX_YAML_DEPTH} levels)") from None
    finally:
        loader.dispose()


def _read_bounded(p: Path) -> bytes:
    """At most MAX_PARAMS_BYTES + 1 bytes of `p`, without blocking on a FIFO that has no writer."""
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.set_blocking(fd, True)  # a pipe with a writer is read to its end; one without is at EOF
        chunks: list[bytes] = []
        total = 0
        while total <= MAX_PARAMS_BYTES:
            chunk = os.read(fd, min(1 << 16, MAX_PARAMS_BYTES + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_params_file(path: str | Path) -> Any:
    """The YAML document in the params file `path` (None when the file holds no YAML document)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"config file {p} not found") from None
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{p} is a directory; -c takes a params YAML file (e.g. params.yaml)")
    if stat.S_ISREG(st.st_mode) and st.st_size > MAX_PARAMS_BYTES:
        raise ConfigError(f"{p}: {st.st_size:,} bytes is more than a params file may hold ({MAX_PARAMS_BYTES:,})")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)):
        raise ConfigError(f"{p} is not a regular file; -c takes a params YAML file")
    try:
        data = _read_bounded(p)
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read: {e.strerror or e}") from None
    if len(data) > MAX_PARAMS_BYTES:
        raise ConfigError(f"{p}: more than {MAX_PARAMS_BYTES:,} bytes; a params file is a few KB of YAML")
    if b"\x00" in data:
        raise ConfigError(f"{p} holds NUL bytes: it is a binary file, not a params YAML file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p} is not UTF-8 text (bad byte at offset {e.start}); save params files as UTF-8") from None
    return parse_yaml(text, str(p))


def read_params_text(text: str, origin: str) -> Any:
    """The YAML document in params `text` already in memory (a pipeline parameter), with the bounds
    of a params file: its UTF-8 encoding at most MAX_PARAMS_BYTES, no lone surrogates (text decoded
    from non-UTF-8 bytes with `surrogateescape`), then `parse_yaml`. None when it holds no document."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise ConfigError(
            f"{origin} is not UTF-8 text (undecodable byte at character {e.start}); pass params as UTF-8"
        ) from None
    if size > MAX_PARAMS_BYTES:
        raise ConfigError(f"{origin}: {size:,} bytes is more than a params file may hold ({MAX_PARAMS_BYTES:,})")
    return parse_yaml(text.removeprefix("\ufeff"), origin)


# ---------------------------------------------------------------- overrides and the raw tree

MAX_INT = 2**63 - 1  # every integer must fit the int64 tensors and C libraries it reaches


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` → (dotted key, YAML-parsed value), with the same guards as a params file."""
    if "=" not in text:
        raise ConfigError(f"override {text[:200]!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text[:200]!r} has an empty key")
    value = parse_yaml(raw, f"override {key}") if raw.strip() else ""
    return key, value


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """tree[a][b][c] = value for `a.b.c`, creating sections as needed."""
    keys = dotted.split(".")
    if any(not k for k in keys):
        raise ConfigError(f"override {dotted[:200]!r}: empty key part (write section.key=value)")
    node = tree
    for k in keys[:-1]:
        if not isinstance(node.get(k, {}), dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def check_tree(tree: Any, prefix: str = "") -> None:
    """Refuse integers outside int64 and non-string keys (YAML `1:` or `on:`) anywhere in the tree."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            if not isinstance(k, str):
                raise ConfigError(f"{prefix}{k!r}: keys must be names, got a {type(k).__name__} (quote it in the YAML)")
            check_tree(v, f"{prefix}{k}.")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            check_tree(v, f"{prefix}{i}.")
    elif isinstance(tree, int) and not isinstance(tree, bool) and abs(tree) > MAX_INT:
        raise ConfigError(
            f"{prefix.rstrip('.')}: {str(tree)[:40]}… does not fit in 64 bits; no setting needs a number this large"
        )
