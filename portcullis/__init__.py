"""Portcullis: a reverse proxy and security gateway."""

__version__ = "0.1.0"
