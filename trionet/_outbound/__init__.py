"""Layer 2, connecting: resolvers, happy eyeballs, ``connect``."""
