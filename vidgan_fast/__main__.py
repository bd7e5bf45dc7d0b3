"""`python -m vidgan_fast ...` is the `vidgan` command."""
from .cli import main

if __name__ == "__main__":
    main(prog_name="vidgan")
