"""The trader's cockpit: the read model behind GET /positions and GET /strategies (`reads`, no web framework) and
the dashboard under /ui/ (`app`, Flask; imported only when the listener mounts it)."""
