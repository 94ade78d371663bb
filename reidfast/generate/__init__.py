"""reidfast.generate: images from trained generative runs (``python -m reidfast.generate METHOD ...``).

Each method's generation lives in its own module (``reidfast.generate.dgnet`` ...), which provides
``add_arguments(parser)`` and ``generate(method, cfg, args, out, device) -> list[Path]`` (the files written under
`out`).
"""
