"""`python -m distree`: the CLI, so that `torchrun ... -m distree train-teacher ...` starts it on every rank."""
import sys

from distree.cli import main

sys.exit(main())
