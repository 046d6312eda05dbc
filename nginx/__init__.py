"""tandem nginx: the front configuration, rendered from ``tandem.toml`` by a pure function
(``render.py``), checked with the real ``nginx -t`` and installed/reloaded by ``runner.py``.
``accel.py`` is the X-Accel contract the origin shares with it."""
