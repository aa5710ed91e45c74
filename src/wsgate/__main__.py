import sys

from wsgate.cli import main

sys.exit(main())
