"""``python -m jmsnas``: the ``jmsnas`` command (`jmsnas.cli`)."""

import sys

from jmsnas.cli import main

sys.exit(main())
