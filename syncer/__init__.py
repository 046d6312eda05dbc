"""tandem syncer: the event-driven mirror between the cluster and the legacy directory, and
the direction flip. Not built yet (issue 4); the package exists so the layout is in place.
It may import ``cluster``; nothing below it imports it."""
