"""tandem origin: the ``tandem`` command (CLI root, config loading, logging, ``up``). The HTTP
origin that serves image and news URLs comes with issue 3. Imports ``cluster`` (and later
``syncer`` and ``nginx``); nothing imports it."""
