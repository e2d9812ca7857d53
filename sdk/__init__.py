"""The maidian SDK: track events from apps and backend services (see docs/sdk.md)."""
