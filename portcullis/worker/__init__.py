"""One event loop serving a compiled `Runtime`."""
