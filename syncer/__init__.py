"""tandem syncer package."""
