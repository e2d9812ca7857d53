"""Sensors Analytics and Segment ingestion: pure decoding and mapping onto maidian events (no HTTP)."""
