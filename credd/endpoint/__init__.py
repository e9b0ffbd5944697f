"""The HTTP endpoint: its routes, its bounds, its status document, and the CLI's client of it."""
