"""Sensors Analytics and Segment ingestion: pure decoding and mapping onto maidian events (no HTTP), the
answers browsers need (web.py), and the properties the collector derives from a request (derive.py)."""
