"""Renders the funnel chart's templates: the subset of Helm's template language they use, nothing more.

No helm binary comes from Debian or PyPI, so the test renders the chart
itself. The chart keeps to: ``{{ .Values.a.b }}``, ``.Release.Name`` and
``.Release.Namespace``, ``.Chart.*``, ``quote``, ``toYaml X | nindent N``,
``X | nindent N``, ``{{- if X }}`` / ``{{- end }}``, ``{{- range $k, $v := X }}``
and the ``{{-``/``-}}`` whitespace trims, with Helm's meaning. Anything else
raises, so the chart cannot silently use what this does not render.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import yaml

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


class Unsupported(ValueError):
    """A template construct this renderer does not implement."""


def _tokens(text: str) -> list[tuple[str, str]]:
    """("text", chunk) and ("action", expression), with the trims applied."""
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for match in _ACTION.finditer(text):
        chunk = text[pos:match.start()]
        if trim_next:
            chunk = chunk.lstrip()
        if match.group(1):
            chunk = chunk.rstrip()
        out.append(("text", chunk))
        out.append(("action", match.group(2)))
        trim_next = bool(match.group(3))
        pos = match.end()
    tail = text[pos:]
    out.append(("text", tail.lstrip() if trim_next else tail))
    return out


def _lookup(path: str, scope: Mapping[str, Any]) -> Any:
    if path.startswith("$"):
        if path not in scope:
            raise Unsupported(f"unknown variable {path}")
        return scope[path]
    if not path.startswith("."):
        raise Unsupported(f"not a value path: {path!r}")
    value: Any = scope["."]
    for part in path[1:].split("."):
        if not isinstance(value, Mapping):
            raise Unsupported(f"{path}: {part} of a {type(value).__name__}")
        value = value.get(part)
    return value


def _quote(value: Any) -> str:
    return json.dumps("" if value is None else str(value))


def _evaluate(expression: str, scope: Mapping[str, Any]) -> Any:
    stages = [s.strip() for s in expression.split("|")]
    head = stages[0].split()
    if head[0] == "toYaml" and len(head) == 2:
        dumped = yaml.safe_dump(_lookup(head[1], scope), default_flow_style=False, sort_keys=False)
        value: Any = dumped.rstrip("\n")
    elif len(head) == 1:
        value = _lookup(head[0], scope)
    else:
        raise Unsupported(f"expression {expression!r}")
    for stage in stages[1:]:
        words = stage.split()
        if words == ["quote"]:
            value = _quote(value)
        elif len(words) == 2 and words[0] == "nindent" and words[1].isdigit():
            pad = " " * int(words[1])
            value = "\n" + "\n".join(pad + line if line else line for line in str(value).splitlines())
        else:
            raise Unsupported(f"pipeline stage {stage!r}")
    return value


def _closed(tokens: list[tuple[str, str]], start: int) -> bool:
    """Whether the block opened just before ``tokens[start]`` has its ``end``."""
    depth = 1
    for kind, value in tokens[start:]:
        word = value.split()[0] if kind == "action" and value.split() else ""
        depth += {"if": 1, "range": 1, "end": -1}.get(word, 0)
        if depth == 0:
            return True
    return False


def _render(tokens: list[tuple[str, str]], start: int, scope: Mapping[str, Any]) -> tuple[str, int]:
    """Render from ``tokens[start]`` to the matching ``end`` (or the end); the text and the next index."""
    out: list[str] = []
    i = start
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "text":
            out.append(value)
            i += 1
            continue
        words = value.split()
        if words and words[0] == "end":
            return "".join(out), i + 1
        if words and words[0] in {"if", "range"} and not _closed(tokens, i + 1):
            raise Unsupported(f"{value!r} without its end")
        if words and words[0] == "if":
            body, after = _render(tokens, i + 1, scope)
            if _evaluate(" ".join(words[1:]), scope):
                out.append(body)
            i = after
        elif words and words[0] == "range":
            match = re.fullmatch(r"range (\$\w+), (\$\w+) := (\S+)", value)
            if match is None:
                raise Unsupported(f"range form {value!r}")
            items = _evaluate(match.group(3), scope) or {}
            after = i + 1
            for key, item in sorted(items.items()):
                body, after = _render(tokens, i + 1, {**scope, match.group(1): key, match.group(2): item})
                out.append(body)
            if not items:  # skip the body
                _, after = _render(tokens, i + 1, {**scope, match.group(1): "", match.group(2): ""})
            i = after
        elif words and words[0] in {"else", "with", "define", "include", "template", "tpl", "block"}:
            raise Unsupported(f"action {value!r}")
        else:
            out.append(str(_evaluate(value, scope)))
            i += 1
    return "".join(out), i


def render(template: str, values: Mapping[str, Any], release: str = "funnel", namespace: str = "default",
           chart: Mapping[str, Any] | None = None) -> str:
    """One template rendered with ``values``."""
    root = {"Values": values, "Release": {"Name": release, "Namespace": namespace}, "Chart": chart or {}}
    text, end = _render(_tokens(template), 0, {".": root})
    if end != len(_tokens(template)):
        raise Unsupported("an end without its if or range")
    return text
