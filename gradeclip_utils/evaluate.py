"""``python -m gradeclip_utils.evaluate``: the evaluation command (``gradeclip evaluate``; its options are
declared in ``cli/commands.py``). The evaluation itself is the ``gradeclip_utils.evaluation`` package; its public
names are also here, where they were before it."""

import sys

from .evaluation import *  # noqa: F401,F403 (the names this module had)
from .evaluation import __all__  # noqa: F401
from .methods.clip_surgery import AUTHORS_CLASS_SET as AUTHORS_SURGERY_NAMES  # noqa: F401 (its name here before)

if __name__ == "__main__":  # the `gradeclip evaluate` alias (cli/commands.py declares its options)
    from torch.distributed.elastic.multiprocessing.errors import record

    from .cli import alias

    # under torchrun, a failing rank's traceback (of an error that is not a user's) goes into torchrun's report
    sys.exit(record(alias)("evaluate"))
