import sys

from app.local import main

sys.exit(main())
