"""Thin routers, one per resource; each reaches the engine only through `app.state.server`."""
