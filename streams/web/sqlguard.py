"""The gate in front of every user-supplied SQL entry point (`funnel sql`, /sql).

Two layers: this check rejects anything but a single SELECT/WITH/SHOW/
DESCRIBE/EXPLAIN statement, ``INTO OUTFILE`` (the client, not the server,
writes that file, so no server setting stops it) and the table functions that
read or write outside the database (``file``, ``url``, ``s3``, ``remote``, ...);
the query then runs on a client whose session is ``readonly = 1``
(ClickHouse refuses writes, DDL, setting changes and table functions by
itself). The check is for clear errors; the readonly session is the guarantee
for everything but ``INTO OUTFILE``.
"""

from __future__ import annotations

import re

__all__ = ["ALLOWED_STATEMENTS", "OUTSIDE_FUNCTIONS", "UnsafeQuery", "check_read_only"]

ALLOWED_STATEMENTS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS")
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
#: Table functions that reach files, URLs, other servers or programs.
OUTSIDE_FUNCTIONS = (
    "file", "fileCluster", "url", "urlCluster", "s3", "s3Cluster", "gcs", "azureBlobStorage",
    "azureBlobStorageCluster", "hdfs", "hdfsCluster", "remote", "remoteSecure", "cluster",
    "clusterAllReplicas", "mysql", "postgresql", "sqlite", "mongodb", "redis", "jdbc", "odbc",
    "executable", "input", "hive", "iceberg", "icebergS3", "deltaLake", "hudi", "python",
)
_OUTSIDE = re.compile(r"\b(" + "|".join(OUTSIDE_FUNCTIONS) + r")\s*\(", re.I)
_OUTFILE = re.compile(r"\bINTO\s+OUTFILE\b", re.I)
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
    if _OUTFILE.search(bare):
        raise UnsafeQuery("INTO OUTFILE is not allowed: read the rows from the answer")
    outside = _OUTSIDE.search(bare)
    if outside:
        raise UnsafeQuery(f"the table function {outside.group(1)}() reaches outside the database")
    return text
