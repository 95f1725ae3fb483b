"""Shared helpers of the tests: literal reference implementations, family converters, realistic weights,
launchers."""
