"""The worker's web server: its endpoints, the page and its JSON API, the SQL guard.

:func:`streams.web.endpoints.install_endpoints` registers ``/metrics``,
``/health`` and ``/sql``; :func:`streams.web.routes.install` the page and
``/api/*``. Both read the worker through :class:`streams.web.endpoints.Worker`.
"""
