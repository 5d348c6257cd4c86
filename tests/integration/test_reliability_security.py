"""Reliability (issue 4), security: read-only SQL, masked secrets, no raw e-mails.

/sql and `funnel sql` answer read-only queries only: writes, DDL, several
statements, injection strings and table functions that reach outside the
database (file(), url()) are refused, and nothing changes. The ClickHouse
password and the e-mail hash key never show in output or the worker log, and a
signup's e-mail address appears nowhere - not in any String column of any
table, not on /metrics, not in the log - only its keyed hash.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas import hash_email
from streams.tools import cli
from streams.tools.netutil import free_port

from .harness import Worker, bootstrap_of, event, produce, start_worker, stopped_cleanly, wait_until

pytestmark = pytest.mark.integration

HASH_KEY = "k3y-f0r-hmac-9c1d"
PASSWORD = "pa55-w0rd-77e3"
MARK = "alice.s3cret"  # in every address, in any letter case
EMAILS = [f"Alice.S3cret+{i}@Example.ORG" for i in range(25)]

#: Queries that must be refused: {canary_file}, {canary_url} and {outfile} are filled in.
REFUSED = [
    "INSERT INTO funnel.events (event_id, user_id) VALUES (generateUUIDv4(), 'x')",
    "ALTER TABLE funnel.events DELETE WHERE 1",
    "ALTER TABLE funnel.events UPDATE user_id = 'x' WHERE 1",
    "DELETE FROM funnel.events WHERE 1",
    "DROP TABLE funnel.events",
    "TRUNCATE TABLE funnel.stage_entries",
    "CREATE TABLE funnel.x (a Int8) ENGINE = Memory",
    "RENAME TABLE funnel.events TO funnel.gone",
    "DETACH TABLE funnel.events",
    "OPTIMIZE TABLE funnel.events FINAL",
    "SYSTEM DROP DNS CACHE",
    "KILL QUERY WHERE 1",
    "SET readonly = 0",
    "GRANT ALL ON *.* TO default",
    "SELECT 1; DROP TABLE funnel.events",
    "SELECT 1;DROP TABLE funnel.events;",
    "SELECT ';'; DROP TABLE funnel.events",
    "SELECT 1 -- ;\n; DROP TABLE funnel.events",
    "SELECT * FROM funnel.events WHERE user_id = '' OR 1 = 1; DROP TABLE funnel.events --'",
    "SELECT * FROM funnel.events WHERE user_id = 'x'; INSERT INTO funnel.events SELECT * FROM funnel.events",
    "/* SELECT */ DROP TABLE funnel.events",
    "WITH x AS (SELECT 1) INSERT INTO funnel.events SELECT * FROM funnel.events",
    "SELECT * FROM funnel.events SETTINGS readonly = 0",
    "SELECT 1 INTO OUTFILE '{outfile}'",
    "SELECT * FROM file('{canary_file}', 'LineAsString')",
    "SELECT * FROM url('{canary_url}', 'LineAsString')",
]


class Canary(http.server.BaseHTTPRequestHandler):
    """Answers anything with a canary line and remembers that it was asked."""

    hits: list[str] = []

    def do_GET(self) -> None:
        Canary.hits.append(self.path)
        body = b"url-canary\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def canary_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Canary)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Canary.hits.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}/canary"
    server.shutdown()
    server.server_close()
    thread.join()


def test_sql_refuses_writes_injection_and_outside_reads(
    pipeline_env: dict[str, str], tmp_path: Path, canary_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    canary_file = tmp_path / "canary.txt"
    canary_file.write_text("file-canary\n")
    outfile = tmp_path / "outfile.txt"
    queries = [q.format(canary_file=canary_file, canary_url=canary_url, outfile=outfile) for q in REFUSED]
    with stopped_cleanly(start_worker(pipeline_env, tmp_path / "worker.log")) as worker:
        send_signups(worker)
        tables = worker.sql("SHOW TABLES FROM funnel")
        before = worker.sql("SELECT count() FROM funnel.events")
        # /sql: every one answered with an error.
        accepted = [q for q in queries if answered(worker, q)]
        # `funnel sql` (it asks the worker that owns the embedded engine): never exit 0.
        for name, value in worker.env.items():
            if name.startswith("FUNNEL_"):
                monkeypatch.setenv(name, value)
        accepted += [f"funnel sql {q}" for q in queries if cli.main(["sql", q]) == 0]
        capsys.readouterr()
        assert accepted == [], "accepted:\n" + "\n".join(accepted)
        assert worker.sql("SHOW TABLES FROM funnel") == tables
        assert worker.sql("SELECT count() FROM funnel.events") == before
        assert not outfile.exists()
        assert Canary.hits == []


def answered(worker: Worker, query: str) -> bool:
    try:
        worker.sql(query)
    except AssertionError:  # the worker answered with an error
        return False
    return True


def test_emails_and_secrets_never_show(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    env = {**pipeline_env, "FUNNEL_EMAIL_HASH_KEY": HASH_KEY}
    log = tmp_path / "worker.log"
    with stopped_cleanly(start_worker(env, log)) as worker:
        send_signups(worker)
        hashes = dict(worker.sql("SELECT user_id, email_hash FROM funnel.events FINAL "
                                 "WHERE event_type = 'signup' ORDER BY user_id"))
        assert hashes == {f"s{i}": hash_email(e, HASH_KEY.encode()) for i, e in enumerate(EMAILS)}
        columns = worker.sql("SELECT table, name FROM system.columns WHERE database = 'funnel' "
                             "AND type LIKE '%String%' AND table NOT LIKE '.inner%' ORDER BY table, name")
        assert ["events", "email_hash"] in columns
        found = [f"{t}.{c}" for t, c in columns if worker.scalar(
            f"SELECT count() FROM funnel.`{t}` WHERE positionCaseInsensitive(toString(`{c}`), '{MARK}') > 0")]
        assert found == []
        metrics = worker.get("/metrics").decode()
        assert MARK not in metrics.lower() and "@" not in metrics
    text = log.read_text(errors="replace")
    assert MARK not in text.lower() and HASH_KEY not in text


def test_clickhouse_password_is_masked_in_output(tmp_path: Path) -> None:
    """`funnel sql` against an unreachable server, with debug logging: no password anywhere."""
    env = {**os.environ, "FUNNEL_CLICKHOUSE_URL": f"http://writer:{PASSWORD}@127.0.0.1:{free_port()}/funnel",
           "FUNNEL_EMAIL_HASH_KEY": HASH_KEY, "FUNNEL_LOG_LEVEL": "debug", "FUNNEL_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "streams.tools.cli", "sql", "SELECT 1"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1 and "sql:" in done.stderr
    for shown in (done.stdout, done.stderr):
        assert PASSWORD not in shown and HASH_KEY not in shown
    from streams.settings import Settings

    settings = Settings(clickhouse_url=env["FUNNEL_CLICKHOUSE_URL"], email_hash_key=HASH_KEY)
    for shown in (str(settings), repr(settings)):
        assert PASSWORD not in shown and HASH_KEY not in shown


def send_signups(worker: Worker) -> None:
    prefix = worker.env["FUNNEL_TOPIC_PREFIX"]
    ts = int(time.time() * 1000) - 60_000
    produce(bootstrap_of(worker.env), [
        (f"{prefix}{stage}", f"s{i}".encode(), event(stage, f"s{i}", ts + n, **fields)[2])
        for i, email in enumerate(EMAILS)
        for n, (stage, fields) in enumerate([("visit", {}), ("signup", {"email": email})])
    ])
    wait_until(lambda: worker.scalar("SELECT count() FROM funnel.stage_entries FINAL") == 2 * len(EMAILS),
               60, "the signups in ClickHouse")
