import sys

from mulo.cli import main

sys.exit(main())
