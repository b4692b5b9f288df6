import sys

from metasup.pipelines.mcp.worker.worker import main

sys.exit(main())
