"""The operator surface: metrics, the admin routes and status page, hot reload, the configuration summary."""
