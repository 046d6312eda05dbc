"""tandem origin package."""
