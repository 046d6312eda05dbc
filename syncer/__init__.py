"""tandem syncer: the event-driven mirror between the cluster and the legacy directory, and
the direction flip (issue 4). Built so far: ``target.py``, the atomic directory target every
direction writes through. It may import ``cluster``; nothing below it imports it."""
