"""Build script for the tracker's C extension and the shipped model; the rest is in setup.cfg."""
import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

# EDGE_AGENT_DEBUG=1 builds the extension unoptimised with asserts on (used by `make test-debug`).
_debug = os.environ.get("EDGE_AGENT_DEBUG") == "1"
_cflags = ["-std=c99", "-Wall", "-Wextra"]
_cflags += ["-O0", "-g", "-UNDEBUG"] if _debug else ["-O3", "-flto"]

# The default model, its manifest and card, and the manifests matched by sha256: package data
# under edge_agent/_shipped/ (edge_agent.config.shipped finds them there), so an installed daemon
# runs the default config from any working directory.
_HERE = Path(__file__).resolve().parent
_SHIPPED = ("engines/models/*.onnx", "engines/models/*.json", "engines/models/MODEL_CARD.md",
            "engines/manifests/*.json")


class BuildPyWithModel(build_py):
    """build_py, then the shipped engines/ files copied into the built package."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout
        for pattern in _SHIPPED:
            for src in sorted(_HERE.glob(pattern)):
                rel = src.relative_to(_HERE)
                dest = Path(self.build_lib, "edge_agent", "_shipped", rel)
                self.mkpath(str(dest.parent))
                self.copy_file(str(src), str(dest))


setup(
    cmdclass={"build_py": BuildPyWithModel},
    ext_modules=[
        Extension(
            "edge_agent.tracking._tracker",
            sources=["edge_agent/tracking/_tracker.c", "edge_agent/tracking/trackmath.c",
                     "edge_agent/tracking/dcf.c"],
            depends=["edge_agent/tracking/trackmath.h", "edge_agent/tracking/dcf.h"],
            extra_compile_args=_cflags,
            extra_link_args=[] if _debug else ["-O3", "-flto"],
        )
    ],
)
