"""The error protocol of every component: what a failure means, and its exit code.

* exit 0: the stage did its job;
* exit 1: it ran and said no (:class:`RefusedError`): a dataset failed validation, the
  gate refused a candidate, a person's promotion was refused, the champion regressed;
* exit 2: bad input (:class:`ComponentError`): a missing or corrupt file, an invalid
  parameter, an unknown task. The message names the input and the problem, and the
  stage leaves no half-written output.

Anything else is a bug and ends in a traceback. :func:`components.console.run_cli`
maps these onto exit codes, once for every command line.
"""

from __future__ import annotations

EXIT_REFUSED = 1
EXIT_BAD_INPUT = 2


class ComponentError(Exception):
    """A problem with a component's input; the message names the input and the problem."""


class RefusedError(Exception):
    """The component ran and decided no; ``label`` starts the one line it prints."""

    label = "refused"
