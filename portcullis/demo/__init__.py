"""The built-in demo upstream, started by the embedded default config."""
