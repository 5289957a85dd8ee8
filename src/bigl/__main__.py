import sys

from bigl.cli import main

sys.exit(main())
