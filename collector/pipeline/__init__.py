"""The write pipeline, one verb a module: auth, decode, judge, dedup (and its recovery), ingest."""
