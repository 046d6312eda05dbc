"""tandem nginx package."""
