"""Output formats, kept apart from the logic that produces the data."""
