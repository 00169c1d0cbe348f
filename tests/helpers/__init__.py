"""Test-only helpers: toy datasets and fault injection."""
