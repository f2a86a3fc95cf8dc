"""`python -m midalign`: the `midalign` command."""

from midalign.cli import main

raise SystemExit(main())
