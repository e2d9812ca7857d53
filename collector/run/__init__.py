"""The processes: `maidian serve` (with its workers), the throw-away `maidian qa` collector, and
`maidian import sensors-log` (vendor_import.py: log files through the live pipeline, a writer beside the server)."""
