"""Route actions: header edits, path rewrites, redirects and fixed responses."""
