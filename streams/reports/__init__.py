"""Funnel reports read from ClickHouse: the terminal summary and the report file."""
