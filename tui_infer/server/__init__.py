"""The local OpenAI-compatible HTTP server (`tui-infer serve`): a front end like the TUI and
the CLI, on the same request path (core/request_path.py) and the loaded model's scheduler.

May import the core; never the Textual app or the headless commands.
"""
