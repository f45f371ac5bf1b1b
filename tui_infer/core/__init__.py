"""The headless core: never imports Textual (a test checks it)."""
