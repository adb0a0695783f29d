"""Test-suite path setup.

* ``tests/`` itself, so that the helper module ``tests/oracles.py`` is importable
  as ``oracles``.
* The repository root, so that ``import car_attacks`` finds the source tree even
  when the editable install was made before ``car_attacks/__init__.py`` existed
  (it then resolves to an empty namespace package).
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
for _path in (_ROOT, _HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)
