"""Code the tests share, one idea per module: ``from helpers.paths import CONF``.

``tests/`` is on ``sys.path`` because pytest puts the folder of ``tests/conftest.py`` there before importing
it (rootdir-relative "prepend" import mode, no ``__init__.py`` above it), so every test file, in any
subfolder, imports these as ``helpers.X``. No test file imports another test file or ``conftest``
(tests/test_layout.py checks it).
"""
