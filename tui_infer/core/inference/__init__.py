"""Running a loaded model: the vocabulary (`types`), chat templates, the engine, the batched
decoder, the llama.cpp thread and log, the backend, memory, pacing and the fit estimate.

May import `core.models` and the plumbing; never the static store, chats or bench.
"""
