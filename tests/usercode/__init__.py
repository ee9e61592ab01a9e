"""A user's own model factories and dataset loaders, imported by path in tests."""
