"""Glue shared by the entry points: instantiation, errors, logging."""
