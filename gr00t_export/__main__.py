"""`python -m gr00t_export ...` = the `gr00t-export` command (handy where the package is not installed)."""

from gr00t_export.cli import app

app()
