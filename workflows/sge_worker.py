"""Pydra's SGE worker with two pydra 1.0a12 bugs worked around.

1. ``SgeWorker.threads_used`` is created as a dict and ``run()`` adds integers to it: every
   submission raises ``TypeError`` before ``qsub`` is called and the Submitter waits forever.
   This subclass makes the counter an integer.
2. With ``poll_for_result_file=True`` (upstream default) ``run()`` calls
   ``load_job(job_pkl=..., ind=...)``, an argument that 1.0a12's ``load_job`` no longer has.
   This subclass defaults to ``poll_for_result_file=False`` (completion via ``qstat``/``qacct``)
   and refuses ``True``.

The rest of the upstream code (array jobs, qsub arguments, polling, eviction reruns) is used
unchanged.
Select it by class: ``Submitter(worker=SgeWorker, qsub_args="-l h_vmem=8G", ...)``.
"""

from __future__ import annotations

import typing as ty

import attrs

import pydra.engine.submitter  # noqa: F401  (must precede pydra.workers: circular import)
from pydra.workers import sge


@attrs.define
class SgeWorker(sge.SgeWorker):
    """``pydra.workers.sge.SgeWorker`` with an integer ``threads_used`` counter."""

    poll_for_result_file: bool = attrs.field(default=False)

    @poll_for_result_file.validator
    def _check_poll(self, attribute, value) -> None:
        if value:
            raise ValueError(
                "poll_for_result_file=True is broken in pydra 1.0a12 (load_job() has no 'ind' "
                "argument); completion is detected with qstat/qacct instead"
            )

    def __attrs_post_init__(self) -> None:
        self.threads_used = 0

    def __setstate__(self, state: dict[str, ty.Any]) -> None:
        super().__setstate__(state)
        self.threads_used = 0

    @classmethod
    def plugin_name(cls) -> str:
        """Same name as upstream (used for the ``sge_scripts`` folder in the cache)."""
        return "sge"
