"""megagate: a small, fast OpenAI- and Anthropic-compatible gateway in front of MegaLLM."""

__version__ = "0.1.0"
