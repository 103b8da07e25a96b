"""Connections to upstream peers: HTTP/1.1 and HTTP/2 links, their pools, and upstream groups."""
