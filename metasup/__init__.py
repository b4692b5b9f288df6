"""metasup: an immutable outer loop for self-modifying AI agents."""

__version__ = "0.1.0"
