"""Headless commands: they import neither Textual nor, until they need it, llama_cpp."""
