import sys

from metasup.faces.api.app import main

sys.exit(main())
