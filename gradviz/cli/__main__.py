"""``python -m gradviz.cli``: the same as the ``gradviz`` command."""

from gradviz.cli import main

main()
