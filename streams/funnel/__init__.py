"""The funnel logic: journeys, windows, deadlines and stalls, rows.

Pure functions and data structures over normalized events. Nothing here
imports Faust, Kafka, ClickHouse or Prometheus (tests/unit/test_import_rules.py
checks it), so every rule of the funnel is unit-tested alone.
"""
