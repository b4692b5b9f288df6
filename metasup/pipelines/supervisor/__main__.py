import sys

from metasup.pipelines.supervisor.launch import main

sys.exit(main())
