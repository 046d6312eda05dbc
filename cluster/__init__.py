"""tandem cluster: the chunked, replicated storage cluster — metadata master (SQLite),
chunk stores (local volumes), background work, change feed, HTTP API and admin CLI.
It imports nothing else of tandem's; sanic appears only in ``http_api``/``http_server``."""
