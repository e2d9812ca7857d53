"""Tools for QA testers: the live view's hub, coverage, and coverage reports."""
