"""`python -m bench`: the benchmark suite (see bench/README.md; `bench/run` is the wrapper)."""
from bench.cli import main

raise SystemExit(main())
