"""Features: each one a `Filter` with a typed config and a `build` function."""
