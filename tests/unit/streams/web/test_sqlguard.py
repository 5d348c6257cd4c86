"""The SQL gate in front of `funnel sql` and /sql: one read-only statement, nothing outside."""

from __future__ import annotations

import pytest

from streams.web.sqlguard import UnsafeQuery, check_read_only


@pytest.mark.parametrize("sql", [
    "SELECT 1",
    "select count() from funnel.events;",
    "WITH x AS (SELECT 1) SELECT * FROM x",
    "SHOW TABLES FROM funnel",
    "DESCRIBE funnel.events",
    "EXPLAIN SELECT 1",
    "SELECT 'INTO OUTFILE x', 'file(''/etc/passwd'')'",  # words inside strings are data
    "SELECT profile, urlish FROM (SELECT 1 AS profile, 2 AS urlish)",
])
def test_read_only_statements_pass(sql: str) -> None:
    assert check_read_only(sql) == sql.strip().rstrip(";").rstrip()


@pytest.mark.parametrize(("sql", "reason"), [
    ("", "empty"),
    ("DROP TABLE funnel.events", "not DROP"),
    ("SELECT 1; DROP TABLE funnel.events", "one statement"),
    ("SELECT ';'; DROP TABLE funnel.events", "one statement"),
    ("/* SELECT */ DROP TABLE funnel.events", "not DROP"),
    ("SELECT 1 INTO OUTFILE '/tmp/x'", "INTO OUTFILE"),
    ("SELECT 1 into\n  outfile '/tmp/x'", "INTO OUTFILE"),
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", r"file\(\)"),
    ("SELECT * FROM URL ('http://127.0.0.1/', 'LineAsString')", r"URL\(\)"),
    ("SELECT * FROM remote('127.0.0.1', system.one)", r"remote\(\)"),
    ("WITH t AS (SELECT * FROM s3('http://x/y')) SELECT * FROM t", r"s3\(\)"),
    ("SELECT * FROM executable('x.sh', 'TSV', 'a String')", r"executable\(\)"),
])
def test_unsafe_statements_are_refused(sql: str, reason: str) -> None:
    with pytest.raises(UnsafeQuery, match=reason):
        check_read_only(sql)
