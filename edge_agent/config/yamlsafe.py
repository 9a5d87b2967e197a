"""Reading untrusted YAML with bounds: file size, nesting depth and alias expansion.

PyYAML's safe loader refuses arbitrary objects but not bombs: a few hundred bytes of nested
aliases ("billion laughs") expand to billions of nodes in anything that walks the result, 20,000
nested ``[`` overflow the composer's recursion, and some scalars fail outside PyYAML's own error
types (``2001-13-45`` as a date, a 5,000-digit integer). :func:`parse` checks the event stream
(PyYAML's parser is not recursive) against the bounds before anything is composed, and reports
every failure as :class:`YamlProblem` with its 1-based line.
"""

from __future__ import annotations

import os
import stat
import threading
from typing import Any, Dict, List, Optional, Tuple

import yaml

MAX_BYTES = 256 * 1024  # a config is a few kilobytes
MAX_DEPTH = 32  # nested mappings/sequences; the deepest config key (a polygon point) is 7
MAX_NODES = 100_000  # nodes after alias expansion
READ_TIMEOUT_S = 2.0  # a config on a local disk reads in microseconds

LineIndex = Dict[Tuple[Any, ...], int]


class YamlProblem(Exception):
    """Why a YAML text was refused, with the 1-based ``line`` it concerns."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


class _Loader(yaml.SafeLoader):
    """SafeLoader whose constructors' plain Python errors keep the node's position."""

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            raise YamlProblem(node.start_mark.line + 1, f"cannot read this value: {exc}") from None


def _check_events(text: str) -> None:
    """Raise YamlProblem when ``text`` nests deeper than MAX_DEPTH or expands past MAX_NODES."""
    sizes: Dict[str, int] = {}  # anchor -> nodes of its subtree
    open_: List[List[Any]] = []  # per open collection: [nodes so far, anchor]
    total = 0
    for ev in yaml.parse(text, Loader=yaml.SafeLoader):
        line = ev.start_mark.line + 1
        if isinstance(ev, yaml.AliasEvent):
            size = sizes.get(ev.anchor, 1)  # an unknown anchor is the composer's error
        elif isinstance(ev, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if len(open_) >= MAX_DEPTH:
                raise YamlProblem(line, f"nested more than {MAX_DEPTH} levels deep")
            open_.append([1, ev.anchor])
            total += 1
            continue
        elif isinstance(ev, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            size, anchor = open_.pop()
            if anchor is not None:
                sizes[anchor] = size
            if open_:
                open_[-1][0] += size
            continue
        elif isinstance(ev, yaml.ScalarEvent):
            size = 1
            if ev.anchor is not None:
                sizes[ev.anchor] = 1
        else:
            continue  # stream and document markers
        total += size
        if open_:
            open_[-1][0] += size
        if total > MAX_NODES:
            raise YamlProblem(line, f"aliases expand it to more than {MAX_NODES} values "
                                    "(a config needs no more than a few hundred)")


def _line_index(node: yaml.Node, path: Tuple[Any, ...], out: LineIndex) -> None:
    """Record the 1-based line of every key path in a composed YAML tree."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[path + (key,)] = key_node.start_mark.line + 1
            _line_index(value_node, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = item.start_mark.line + 1
            _line_index(item, path + (i,), out)


def parse(text: str) -> Tuple[Any, LineIndex]:
    """(data, line of every key path) of one YAML document; raise YamlProblem when refused."""
    if len(text) > MAX_BYTES:  # characters; the byte bound is checked by read_bounded
        raise YamlProblem(1, f"longer than {MAX_BYTES // 1024} KiB (a config is a few kilobytes)")
    try:
        _check_events(text)
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlProblem(mark.line + 1 if mark else 1, f"malformed YAML: {problem}") from None
    except RecursionError:  # not reachable within MAX_DEPTH; kept so no traceback can escape
        raise YamlProblem(1, "nested too deeply") from None
    lines: LineIndex = {}
    if root is not None:
        _line_index(root, (), lines)
    return data, lines


def read_bounded(path: str, limit: int = MAX_BYTES,
                 timeout_s: float = READ_TIMEOUT_S) -> Optional[bytes]:
    """The bytes of ``path``, or None when it holds more than ``limit`` (read no further).

    Only a regular file is read: a FIFO, a device or a socket would block the reader for as
    long as its writer likes, so it is refused (``OSError`` naming it) without waiting. A read
    that still takes longer than ``timeout_s`` (a hung network mount) raises ``TimeoutError``;
    its thread is left behind, not waited for.
    """
    result: Dict[str, Any] = {}
    done = threading.Event()

    def read() -> None:
        try:
            result["data"] = _read_regular(path, limit)
        except BaseException as exc:  # handed to the caller
            result["error"] = exc
        finally:
            done.set()

    threading.Thread(target=read, name="config-read", daemon=True).start()
    if not done.wait(timeout_s):
        raise TimeoutError(f"reading it took longer than {timeout_s:g} s")
    if "error" in result:
        raise result["error"]
    return result["data"]


def _read_regular(path: str, limit: int) -> Optional[bytes]:
    # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"not a regular file (a {_kind(mode)})")
        raw = f.read(limit + 1)
    return raw if len(raw) <= limit else None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"
