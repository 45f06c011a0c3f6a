"""Layer 2, serving: listening sockets, PROXY protocol, the accept loop, ``Server``."""
