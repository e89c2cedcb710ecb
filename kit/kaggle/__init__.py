"""Kaggle: the ``kaggle`` CLI for data and uploads, provenance of a submission, the offline dataset, and what the
notebooks call.

One module per responsibility, each a few plain functions (``kit kaggle ...`` and the Makefile are thin shells
over them); they import each other in one direction only (base <- provenance <- offline <- cli; base <- notebooks):

- ``cli.py``: the real kaggle CLI. ``download_competition`` (``make download``), ``upload_submission`` (``make
  upload``) turn its failures into one KaggleError that says the fix; missing credentials name where
  ``kaggle.json`` goes (``credentials_help``), never a stack trace. ``add_subcommands``: ``kit kaggle ...``.
- ``provenance.py``: ``record_submission`` (``kit submit --provenance DIR``, ``make submit``) names a submission
  ``<UTC timestamp>-<config>-<local score>.csv`` and writes a sidecar JSON beside it: the merged config, the kit
  version and git commit, the sha1 of every weights file, the validation metrics. The local score is the
  competition metric of ``kit validate`` (an open-set split of the labelled rows; see ``local_validation``), for
  either task: it is computed from the competition's own labelled images, never from a solution.csv.
- ``offline.py``: ``build_offline_dataset`` (``make kaggle-dataset``) writes the folder to upload as a Kaggle
  dataset: ``wheels/`` (the kit, distribution ``animalclef-kit``, and the dependencies Kaggle lacks) and
  ``weights/`` (LightGlue weights). Attached to a notebook, its install cell finds it under /kaggle/input.
- ``notebooks.py``: ``find_competition``, ``config_args``, ``weight_settings``, ``show_report`` for
  notebooks/*.ipynb, and ``run_notebook``, which injects parameters papermill-style and executes a notebook
  headlessly (the tests).
- ``base.py``: what they share (the competition slug, /kaggle/input, the kaggle config folder, the two errors).

Nothing here imports torch at module level: ``kit kaggle download`` starts in a second.
"""

from .base import COMPETITION, INPUT_ROOT, REPO_ROOT, KaggleError, NotebookError, kaggle_config_dir
from .cli import (add_subcommands, credentials_help, download_competition, kaggle_executable, run_kaggle,
                  unzip_into, upload_submission)
from .notebooks import (config_args, find_competition, internet_on, notebook_parameters, run_notebook, show_report,
                        weight_settings)
from .offline import (KAGGLE_LACKS, KAGGLE_PLATFORM, KAGGLE_PYTHON, KIT_DISTRIBUTION, KIT_WHEEL, LIGHTGLUE_FILES,
                      build_offline_dataset, upload_instructions)
from .provenance import (config_name, git_info, local_validation, record_name, record_submission, sidecar_path,
                         upload_message, weight_hashes)

__all__ = ["COMPETITION", "INPUT_ROOT", "KAGGLE_LACKS", "KAGGLE_PLATFORM", "KAGGLE_PYTHON", "KIT_DISTRIBUTION",
           "KIT_WHEEL", "LIGHTGLUE_FILES", "REPO_ROOT", "KaggleError", "NotebookError", "add_subcommands",
           "build_offline_dataset", "config_args", "config_name", "credentials_help", "download_competition",
           "find_competition", "git_info", "internet_on", "kaggle_config_dir", "kaggle_executable",
           "local_validation", "notebook_parameters", "record_name", "record_submission", "run_kaggle",
           "run_notebook", "show_report", "sidecar_path", "unzip_into", "upload_instructions", "upload_message",
           "upload_submission", "weight_hashes", "weight_settings"]
