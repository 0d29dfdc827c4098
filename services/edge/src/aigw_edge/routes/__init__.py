"""The HTTP routes: chat completions (the hot path), models, health."""
