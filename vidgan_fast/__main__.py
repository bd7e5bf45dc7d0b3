"""`python -m vidgan_fast ...` is the `vidgan` command (with its exit status, as the console script's sys.exit(main()))."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog_name="vidgan"))
