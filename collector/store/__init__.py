"""The data directory: the frame format and heads, event-id ranges, the log writer, rewrites, the catalog, verify."""
