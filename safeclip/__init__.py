"""Safe-CLIP Studio core library: presets, CLIP pair loaders, training, evaluation, inference.

    >>> import safeclip
    >>> safeclip.list_presets()          # names of the registered presets
    >>> orig, safe = safeclip.load_clip_pair("mini")
    >>> orig.encode_text(["a dog on the beach"]).shape

This module only re-exports; nothing heavy happens at import time (no gradio, no model loading).
"""
