"""runtime: the ASPD protocol, the hybrid serial-parallel engine and the HTTP server."""

__version__ = "0.1.0"  # the one definition (pyproject.toml reads it)
