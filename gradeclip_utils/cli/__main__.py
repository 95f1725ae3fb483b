"""``python -m gradeclip_utils.cli`` (and ``torchrun -m gradeclip_utils.cli``): the ``gradeclip`` command."""

import sys

if __name__ == "__main__":  # run, not imported (the package's tests import every module)
    from torch.distributed.elastic.multiprocessing.errors import record

    from . import main

    sys.exit(record(main)())
