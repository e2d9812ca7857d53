"""The HTTP edge: native routes (`app.py`), vendor routes, the live page. With `run/`, the only aiohttp code."""
