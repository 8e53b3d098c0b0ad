"""Where the relay keeps what it holds: the store, one sub-package per back end."""
