"""`python -m analysis.report` (and `torchrun ... -m analysis.report`)."""

from analysis.report.cli import main

if __name__ == "__main__":
    main()
