"""Entry point: multitask fine-tuning of minbert on SST, Quora and STS (see `--help`)."""

from multitask.cli import main

if __name__ == "__main__":
    main()
