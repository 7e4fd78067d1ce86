"""`python -m pipeline` is `facecurate`."""

from pipeline.cli import main

main()
