"""MQTT stage: the client and its parts, topics, commands, Home Assistant discovery, listener.

``AgentMqtt`` (client.py) publishes what the event log (``edge_agent.outbox.eventlog.Outbox``)
holds and everything else of the topic contract (docs/mqtt.md), through one part per job:
connection.py, publisher.py, server.py, status.py, discovery.py. paho is imported only in this
package; the submodules are imported on demand.
"""
