"""attnzoo inside other libraries. Each integration imports its library only when used:
importing `attnzoo` (or this package) never imports them.

* `attnzoo.integrations.transformers`: an attention implementation for Hugging Face
  `transformers` models (`attn_implementation="attnzoo"`).
"""
