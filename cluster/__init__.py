"""tandem cluster package."""
