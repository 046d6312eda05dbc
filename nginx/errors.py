"""The nginx package's error tree — every error ``nginx.render`` and ``nginx.runner`` raise.

    NginxError                  base
    ├── NginxConfigError        the tandem config cannot be written as nginx config (a ``$`` in
    │                           a path, a control character, port 0 …); raised by the pure
    │                           renderer, before nginx is ever run
    ├── NginxNotInstalled       no nginx binary; the message says how to install it
    └── NginxCommandError       nginx itself refused (``nginx -t`` failed, a reload found no
                                running nginx …); the message is nginx's own stderr

``OSError`` from running nginx is mapped into this tree once, in ``nginx.runner``.
"""

from __future__ import annotations


class NginxError(Exception):
    """Base of every error of the nginx package."""


class NginxConfigError(NginxError):
    """The tandem config holds something nginx config cannot express; the message names it."""


class NginxNotInstalled(NginxError):
    """The nginx binary was not found."""


class NginxCommandError(NginxError):
    """An nginx command failed; the message carries what nginx printed."""
