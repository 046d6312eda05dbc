"""tandem nginx: the front configuration, rendered from ``tandem.toml`` by a pure function
(``render.py``; its upstream groups are the model in ``upstream.py``, which refuses what nginx
would ignore or reject), checked with the real ``nginx -t`` and installed/reloaded by
``runner.py``. ``accel.py`` is the X-Accel contract the origin shares with it."""
