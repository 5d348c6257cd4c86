"""The gate in front of every user-supplied SQL entry point (`funnel sql`, /sql).

Two layers: this check rejects anything but a single SELECT/WITH/SHOW/
DESCRIBE/EXPLAIN statement, and the query then runs on a client whose
session is ``readonly`` (ClickHouse refuses writes and DDL by itself). The
check is for clear errors; the readonly session is the guarantee.
"""

from __future__ import annotations

import re

__all__ = ["ALLOWED_STATEMENTS", "UnsafeQuery", "check_read_only"]

ALLOWED_STATEMENTS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS")
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`(?:[^`\\]|\\.)*`", re.S)


class UnsafeQuery(ValueError):
    """The query is not a single read-only statement."""


def check_read_only(sql: str) -> str:
    """Return ``sql`` stripped of a trailing ``;`` if it is one read-only statement.

    Raises UnsafeQuery naming what is wrong.
    """
    text = sql.strip()
    if not text:
        raise UnsafeQuery("empty query")
    # Look at the statement with string literals and comments blanked out, so
    # a ';' or keyword inside a string neither hides nor fakes a statement.
    bare = _COMMENT.sub(" ", _STRING.sub("''", text)).strip()
    if bare.endswith(";"):
        bare = bare[:-1].rstrip()
        text = text.rstrip()[:-1].rstrip()
    if ";" in bare:
        raise UnsafeQuery("only one statement per query")
    first = bare.split(None, 1)[0].upper() if bare else ""
    if first not in ALLOWED_STATEMENTS:
        raise UnsafeQuery(
            f"only read-only queries are allowed ({', '.join(ALLOWED_STATEMENTS)}), not {first or 'this'}"
        )
    return text
