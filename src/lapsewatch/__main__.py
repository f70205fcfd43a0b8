"""``python -m lapsewatch``, the same as the ``lapsewatch`` command."""

from lapsewatch.cli import main

main()
