"""Every adaptation of Faust's internals, and only those.

They hold for the faust-streaming version pinned in pyproject.toml (0.15.3).
Upgrading Faust means reading this folder: each module names the internal it
relies on and why.
"""
