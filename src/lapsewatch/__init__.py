"""lapsewatch: stop account takeovers through lapsed email domains."""

__version__ = "0.1.0"
