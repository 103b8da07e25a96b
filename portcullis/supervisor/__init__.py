"""The master process: sockets, workers, signals, reload."""
