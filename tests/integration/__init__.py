"""Integration tests on the real parts.

The harness's assertions (exact truth, consistency) are rewritten by pytest so
that a failure prints the differing values, not a bare AssertionError.
"""

import pytest

pytest.register_assert_rewrite("tests.integration.harness")
