"""tandem nginx: a pure renderer from the tandem config to front nginx configuration. Not
built yet (issue 5). It imports nothing of tandem's."""
