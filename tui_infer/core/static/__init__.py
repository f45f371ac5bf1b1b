"""Static inference: request keys, the prediction store and batch input.

May import `core.inference`, `core.models` and the plumbing.
"""
