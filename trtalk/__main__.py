"""``python -m trtalk``: the `trtalk` command."""

import sys

from trtalk.cli import main

sys.exit(main())
