import sys

from feddetox_cli import main
from feddetox_cli.lifetime import die_with_parent

die_with_parent()
sys.exit(main())
