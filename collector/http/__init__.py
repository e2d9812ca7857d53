"""The HTTP edge: native routes (`app.py`), vendor routes, the live page, workers as one service (`workers.py`).

With `run/`, the only aiohttp code.
"""
