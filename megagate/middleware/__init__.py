"""Pure ASGI middlewares, one per module; each works alone around any ASGI app."""
