"""Plain helper functions for the tests, by topic (fixtures that use them live in tests/conftest.py).

Importable as `helpers.<topic>`: pytest puts tests/ on sys.path (the default "prepend" import mode
with no __init__.py in tests/), the same way test modules import each other.
"""
