"""Command-line interface: ``otaro`` (umbrella) and ``otaro-export``."""
