"""Layer 0: errors, small shared helpers, option objects, socket-option application."""
