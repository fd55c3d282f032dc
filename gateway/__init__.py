"""An AI gateway: one OpenAI / Anthropic / Gemini-compatible endpoint in front of every provider."""

__version__ = "0.1.0"
