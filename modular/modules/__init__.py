"""Pluggable slot fillers: each file registers itself into a slot registry.

Importing this package runs every ``@FFN.register`` / ``@ADAPTER.register`` /
``@HEAD.register`` / ``@BLOCK.register`` decorator below.
"""
