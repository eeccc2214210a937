import sys

from tools.linksim.proxy import main

sys.exit(main())
