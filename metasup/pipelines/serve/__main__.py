import sys

from metasup.pipelines.serve.main import main

sys.exit(main())
