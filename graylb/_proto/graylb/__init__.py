"""Generated stubs: see graylb/_proto/__init__.py."""
