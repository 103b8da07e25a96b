"""Listening sockets and the client-side connections: HTTP/1.1, HTTP/2 and TLS."""
