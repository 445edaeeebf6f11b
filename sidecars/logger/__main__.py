"""`python -m sidecars.logger` runs the logger sidecar."""

import sys

from sidecars.logger.main import main

sys.exit(main())
