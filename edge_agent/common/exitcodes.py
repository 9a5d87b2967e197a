"""The exit statuses of every ``edge-agent`` command, in one place (scripts and systemd read them).

====  ==================  ===============================================================
0     ``EXIT_OK``         done
1     ``EXIT_FAILED``     a failure at run time: the pipeline or every camera failed, an
                          update did not commit, a broker or backend could not be reached
2     ``EXIT_BAD_INPUT``  bad input: config, arguments, model, key, signature, version
3     ``EXIT_MISSING_EXTRA``  an optional part is not installed (``train``/``export`` without
                          PyTorch: ``pip install 'edge-agent[train]'``)
130   ``EXIT_INTERRUPTED``  Ctrl-C (128 + SIGINT, as a shell reports it)
====  ==================  ===============================================================
"""

import sys

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_MISSING_EXTRA = 3
EXIT_INTERRUPTED = 130


def fail(command: str, message: object, status: int = EXIT_BAD_INPUT) -> int:
    """Say ``edge-agent COMMAND: MESSAGE`` on stderr; returns ``status`` (a handler's
    ``return fail(...)``)."""
    print(f"edge-agent {command}: {message}", file=sys.stderr)
    return status
