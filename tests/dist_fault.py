"""Run a module as ``__main__`` (under torchrun) with a hard fault, for the tests: the rank named by
``GRADECLIP_TEST_KILL_RANK`` kills itself with SIGKILL (no clean-up, no error recorded) right after it
appended its first result record to its part file.

    torchrun --standalone --nproc-per-node 2 tests/dist_fault.py gradeclip_utils.evaluate ARGS...
"""

import os
import runpy
import signal
import sys

from gradeclip_utils.jobs.files import Journal

if os.environ.get("RANK") == os.environ.get("GRADECLIP_TEST_KILL_RANK"):
    append = Journal.append

    def append_then_die(self, rows):
        append(self, rows)
        os.kill(os.getpid(), signal.SIGKILL)

    Journal.append = append_then_die

module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
