"""`funnel bench`: throughput, freshness, memory and SQL figures on the embedded parts.

One run starts an embedded broker, pre-produces the generator's realistic
traffic (so producing is not measured) and measures, against the same topics:

1. ``ceiling``   raw aiokafka consume + ``json.loads`` (what the broker and the
   client allow);
2. ``naive``     a Faust agent taking one event at a time, doing the same
   validation and per-user journey work on a table (the baseline);
   ``core``      the worker's own batch code (the ingest and journey agents'
   bodies, chDB sinks and metrics) called directly, without Kafka or Faust: the
   most the pipeline could do if moving messages cost nothing;
3. ``pipeline``  the real worker (``python -m streams.tools.cli worker``, chDB, every
   sink on), from the first message consumed to the last row written;
4. ``freshness`` a fixed offered load: production -> counter on ``/metrics``
   and production -> row queryable in ClickHouse (p50/p99);
5. ``memory``    worker RSS after N distinct users were tracked, per table store;
6. ``sql``       the funnel-by-channel and a ``windowFunnel`` query over N
   synthetic events in chDB (best of 3).

It prints ``name: value unit`` lines, the ratios pipeline/ceiling and
pipeline/naive (and pipeline/core), and ``--json FILE`` writes them with the
machine, the sizes and per-stage details (CPU split, startup, counts checked
against the traffic's ground truth). It asserts nothing about speed:
BENCHMARKS.md records the figures. The default is a quick run (about a
minute); ``--full`` uses the issue's sizes, which take about ten minutes once
the pipeline meets its targets (today the 1M-user memory runs alone take
half an hour). Other processes on the machine make numbers noisy: read the
ratios against the ceiling measured in the same run.

``--worker-env NAME=VALUE`` and ``--worker-module`` run the same stages
against a tuned or prototype worker, which is how BENCHMARKS.md measures a
change before it is made; ``--profile DIR`` records each worker with py-spy.

One module a stage, each with a ``stage_<name>(ctx, ...)`` that :func:`run
<streams.bench.cli.run>` calls in the order above (``--only`` picks them):
``ceiling``, ``naive`` (and the child process the naive agent runs in),
``core``, ``pipeline``, ``freshness``, ``memory`` and ``sql``. What they share:
``context`` (the sizes, the run's :class:`~streams.bench.context.Context` and
the pre-produced traffic), ``report`` (figures, JSON, machine, progress line),
``measure`` (/metrics sums, latencies, percentiles), ``traffic`` (the messages),
``kafka`` (topics and producing) and ``workers`` (the worker processes). ``cli``
holds the options, ``run()`` and ``main()``.
"""

from streams.bench.cli import main

__all__ = ["main"]
