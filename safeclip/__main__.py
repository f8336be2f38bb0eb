"""``python -m safeclip``: the ``safeclip`` command without installing the package."""
import sys

from .cli import main

sys.exit(main())
