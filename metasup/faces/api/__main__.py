import sys

from metasup.faces.api.server import main

sys.exit(main())
