"""`python -m cast_video ...`, the form torchrun launches."""

import sys

from .cli import main

sys.exit(main())
