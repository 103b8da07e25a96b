"""Load balancing: peer selection, health, outlier ejection and circuit breaking."""
