"""Model files: the GGUF reader, the library, the hub, downloads, the HF cache, bundled models,
and the one sha256 cache (digest).

Everything here is about a file on disk or on the hub, never about running it. May import
the plumbing (`core.errors`, `core.db`, `core.files`, `core.paths`, `core.config`,
`core.units`) and nothing else of the core.
"""
