"""`python -m sidecars.monitor` runs the monitor sidecar."""

import sys

from sidecars.monitor.main import main

sys.exit(main())
