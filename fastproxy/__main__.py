"""`python -m fastproxy` is the `fastproxy` command."""
from fastproxy.cli import main

raise SystemExit(main())
