"""``hydra/sweeper=normbench`` (normbench's default): see :class:`normbench.sweep.ResumingSweeper`."""

from normbench.sweep import ResumingSweeper


class NormbenchSweeper(ResumingSweeper):
    """Hydra's basic grid sweeper that resumes, checks every job before launching, and summarizes."""
