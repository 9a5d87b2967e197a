"""Build script for the tracker's C extension; everything else is in setup.cfg."""
import os

from setuptools import Extension, setup

# EDGE_AGENT_DEBUG=1 builds the extension unoptimised with asserts on (used by `make test-debug`).
_debug = os.environ.get("EDGE_AGENT_DEBUG") == "1"
_cflags = ["-std=c99", "-Wall", "-Wextra"]
_cflags += ["-O0", "-g", "-UNDEBUG"] if _debug else ["-O3", "-flto"]

setup(
    ext_modules=[
        Extension(
            "edge_agent.tracking._tracker",
            sources=["edge_agent/tracking/_tracker.c", "edge_agent/tracking/trackmath.c",
                     "edge_agent/tracking/dcf.c"],
            depends=["edge_agent/tracking/trackmath.h", "edge_agent/tracking/dcf.h"],
            extra_compile_args=_cflags,
            extra_link_args=[] if _debug else ["-O3", "-flto"],
        )
    ]
)
