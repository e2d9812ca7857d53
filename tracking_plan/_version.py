"""The distribution's version, shared by every maidian package."""

__version__ = "0.1.0"
