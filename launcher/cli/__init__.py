"""The ``launcher`` command line: one module per command group; shared options, output and the one way to
fail in ``common``."""
