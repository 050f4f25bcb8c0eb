"""abtest: A/B testing experimentation service for LLM inference engines."""

__version__ = "0.1.0"
