"""``python -m origin`` is ``tandem``."""

from origin.cli import entry

entry()
