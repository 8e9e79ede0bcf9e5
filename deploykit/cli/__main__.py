"""`python -m deploykit.cli`, as the `deploykit` command."""

from deploykit.cli import main

main()
