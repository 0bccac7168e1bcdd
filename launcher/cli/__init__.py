"""The ``launcher`` command line: one module per command group, one way to fail (see ``main.abort``)."""
