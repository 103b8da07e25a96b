"""Routes: matching requests by host, path, method and headers, and the route actions."""
