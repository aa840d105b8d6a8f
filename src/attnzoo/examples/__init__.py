"""Runnable examples (``python -m attnzoo.examples.<name>``); the library never imports them."""
