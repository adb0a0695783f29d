"""``python -m car_attacks ...`` is the ``car-attacks`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
