"""The renewal engine: what credd keeps alive, when it renews it, and the state it serves."""
