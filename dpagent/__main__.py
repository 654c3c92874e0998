"""`python -m dpagent` runs the CLI (used by tests and where console scripts are not on PATH)."""

from dpagent.cli.main import main

main()
