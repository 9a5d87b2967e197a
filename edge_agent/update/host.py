"""The updater's view of the running pipeline (:class:`~edge_agent.update.updater.EngineHost`):
the engine that runs, opening another, and swapping it between two batches."""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Optional

from edge_agent.common.interfaces import Engine
from edge_agent.config import ModelConfig

if TYPE_CHECKING:  # the pipeline imports capture, OpenCV ...: only its type is needed here
    from edge_agent.pipeline import Pipeline


class PipelineHost:
    """:class:`~edge_agent.update.updater.EngineHost` over the agent's ``Pipeline``."""

    def __init__(self, pipeline: Pipeline,
                 open_fn: Optional[Callable[[ModelConfig], Engine]] = None):
        self.pipeline = pipeline
        if open_fn is None:
            from edge_agent.inference import open_engine as open_fn
        self._open = open_fn

    def running_engine(self) -> Engine:
        return self.pipeline.engine

    def open_engine(self, model_cfg: ModelConfig) -> Engine:
        return self._open(model_cfg)

    def between_batches(self, fn: Callable[[], Any]) -> Future:
        return self.pipeline.run_in_loop(lambda _pipe: fn())

    def swap_engine(self, engine: Engine) -> Engine:
        return self.pipeline.swap_engine(engine)
