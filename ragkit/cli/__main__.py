"""`python -m ragkit.cli`: the ragkit command line."""
from ragkit.cli import app

app(prog_name="ragkit")
