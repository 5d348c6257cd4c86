"""Shared test settings: UTC everywhere, whatever the machine says."""

from __future__ import annotations

import os
import time

os.environ["TZ"] = "UTC"
time.tzset()
