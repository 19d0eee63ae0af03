"""`python -m aspd_cli ...` is `aspd ...`."""

import sys

from .main import main

sys.exit(main())
