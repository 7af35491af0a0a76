"""The HTTP side: one aiohttp application per port (inference, management, metrics)."""
