"""`python -m distree.serve`: the entry point of one rank, kept as a short alias of
`distree.runtime.rank` (torchrun: `torchrun --nproc-per-node N+1 -m distree.serve -- --run DIR`)."""
from distree.runtime.rank import exit_rank

if __name__ == "__main__":
    exit_rank()
