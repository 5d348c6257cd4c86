"""Command-line tools: ``funnel`` and its commands (worker, demo, emit, generate, report)."""
