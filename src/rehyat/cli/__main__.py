"""``python -m rehyat.cli``: the same as the ``rehyat`` command (used under ``torchrun``).

Guarded: a worker process started with ``spawn`` imports this module again (as ``__mp_main__``) and must
not run the command a second time."""

import sys

from rehyat.cli import main

if __name__ == "__main__":
    sys.exit(main())
