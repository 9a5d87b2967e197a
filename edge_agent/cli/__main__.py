"""``python -m edge_agent.cli ARGS``: the ``edge-agent`` command without its console script."""

import sys

from edge_agent.cli import main

sys.exit(main())
