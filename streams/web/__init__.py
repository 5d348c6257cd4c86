"""The worker's web server: the page, its JSON API and the SQL guard."""
