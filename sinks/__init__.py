"""Sinks: the batch contract, the ClickHouse writer and the Prometheus metrics.

Knows nothing about Faust: the stream agents add rows and flush; sinks write.
"""

from sinks.base import BatchSink, Row
from sinks.clickhouse import (
    COLUMNS,
    DDL_DIR,
    INSERT_TYPES,
    ClickHouseSink,
    ClickHouseTarget,
    connect,
    migrate,
    parse_clickhouse_url,
    write_funnel_config,
)
from sinks.exceptions import SinkConfigError, SinkRetryableError, SinkStopped
from sinks.metrics import DEFAULT_CHANNELS, OTHER_CHANNEL, ChannelBounder, FunnelMetrics, Tally

__all__ = [
    "COLUMNS",
    "DDL_DIR",
    "DEFAULT_CHANNELS",
    "INSERT_TYPES",
    "OTHER_CHANNEL",
    "BatchSink",
    "ChannelBounder",
    "ClickHouseSink",
    "ClickHouseTarget",
    "FunnelMetrics",
    "Row",
    "SinkConfigError",
    "SinkRetryableError",
    "SinkStopped",
    "Tally",
    "connect",
    "migrate",
    "parse_clickhouse_url",
    "write_funnel_config",
]
