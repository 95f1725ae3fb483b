"""What the long jobs (the evaluation, the dataset explanation) stand on, on one process or many.

* ``jobs.files``: what every resumable run writes with, on one process as on several: atomic writes,
  CSV tables, append-only part files (``Journal``) and their merge into the single-process tables.
* ``jobs.distributed``: the processes of a run under ``torchrun``: this process's place (``Context``,
  ``init``), the work units each rank takes, collectives, faults, one progress bar over every rank,
  and loading units in DataLoader workers.

A run's settings file, its ``run.json`` and its provenance are ``records``'s. (The package is not called
``runs``: that is the name of the commands' output folders, which ``.gitignore`` leaves out.)
"""
