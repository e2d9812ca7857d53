"""The support agents' view: staff accounts and sessions, finding a person, their timeline, the audit.

`access` (passwords, tokens, sessions, CSRF, lock-out, single sign-on),
`search` and `timeline` (one person's events, paged, as the identity graph
attributes them) hold no HTTP: `http/support_routes.py` serves them, and keeps
the audit trail with `privacy/audit.py`.
docs/guide-support.md is the long form.
"""
