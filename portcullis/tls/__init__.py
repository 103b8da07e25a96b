"""TLS: server contexts, the SNI certificate store with file watching, client identities."""
