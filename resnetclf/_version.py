"""The package version, in a module of its own that any module may import."""

__version__ = "0.1.0"
