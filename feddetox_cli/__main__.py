import sys

from feddetox_cli import main

sys.exit(main())
