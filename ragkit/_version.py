"""ragkit's version (a leaf module: anything may import it without a cycle)."""
__version__ = "0.1.0"
