"""The bench: llama-bench's pp/tg method, batched throughput, and the history of runs.

May import `core.inference`, `core.models` and the plumbing.
"""
