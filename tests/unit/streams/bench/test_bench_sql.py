"""streams.bench.sql: the SQL stage's synthetic data fits the schema and the queries."""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from streams.bench.sql import insert_synthetic, sql_query


def test_synthetic_data_fits_the_schema_and_the_queries(chdb_client: Client, ch_database: str) -> None:
    users = insert_synthetic(chdb_client, 1_170, ch_database)
    assert users == 1_000
    count = chdb_client.query(f"SELECT count() FROM {ch_database}.events").result_rows[0][0]
    assert count == 1_000 + 100 + 40 + 20 + 10
    levels = {level: users for level, users in
              chdb_client.query(sql_query("window_funnel", ch_database)).result_rows}
    # Everyone visits; each later stage is reached by the first users, in order and within the window.
    assert levels == {1: 900, 2: 60, 3: 20, 4: 10, 5: 10}
    rows = chdb_client.query(sql_query("funnel_by_channel", ch_database)).result_rows
    assert {stage for _, stage, _, _ in rows} == {"visit", "signup", "webinar", "consultation", "purchase"}
    # Visits spread over the last 13 days: the query's "this week and last week" sees part of them.
    assert 0 < sum(this + last for _, stage, this, last in rows if stage == "visit") <= 1_000
