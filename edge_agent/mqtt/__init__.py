"""MQTT stage: durable outbox, client, topics, commands, Home Assistant discovery, listener.

``Outbox`` (outbox.py) stores events durably and assigns ``seq``; ``AgentMqtt`` (client.py)
publishes them and everything else of the topic contract (docs/mqtt.md). paho is imported only in
this package. The submodules are imported on demand so ``edge_agent.eventlog`` stays light.
"""
