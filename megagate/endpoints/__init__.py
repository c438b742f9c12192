"""The client-facing routes: the upstream proxy and its relay, token counts, the model list."""
