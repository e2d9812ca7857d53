"""The maidian collector: receive, validate, deduplicate, stitch and store events durably."""
