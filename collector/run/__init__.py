"""The processes: `maidian serve` (with its workers) and the throw-away `maidian qa` collector."""
