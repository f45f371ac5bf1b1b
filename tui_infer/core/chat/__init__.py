"""Conversations: the history database and the chat session's rules (turns, what fits).

May import `core.inference`, `core.models` and the plumbing.
"""
