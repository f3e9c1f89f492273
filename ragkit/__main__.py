"""`python -m ragkit`: the ragkit command line."""
from ragkit.cli import app

app(prog_name="ragkit")
