"""tui-infer: run quantized GGUF language models locally, with live figures."""

__version__ = "0.1.0"
