"""``python -m steadyserve serve ...``"""

import sys

from steadyserve.cli import main

sys.exit(main())
