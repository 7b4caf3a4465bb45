"""``python -m rehyat.cli``: the same as the ``rehyat`` command (used under ``torchrun``)."""

import sys

from rehyat.cli import main

sys.exit(main())
