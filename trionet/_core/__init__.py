"""Layer 1: statistics, throttle accounting, the timeout cop, TLS, ``Connection``."""
