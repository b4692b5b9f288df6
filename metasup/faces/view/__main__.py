import sys

from metasup.faces.view.render import main

sys.exit(main())
