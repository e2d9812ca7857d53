import sys

from maidian.collector.cli import main

sys.exit(main())
