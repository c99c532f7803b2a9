"""``python -m napari_samtune.cli ...`` (what ``torchrun -m`` launches): the ``samtune`` command."""

import sys

from napari_samtune.cli import main

sys.exit(main())
