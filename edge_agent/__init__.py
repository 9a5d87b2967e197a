"""edge-agent: detection, tracking and durable MQTT events on edge cameras."""

__version__ = "0.1.0"
