"""The one place a paho ``Client`` is made: the daemon's connection, ``engine push``'s requester
and ``edge-agent listen`` (plain and ``--ack``) all start from :func:`new_client`.

It settles what they must agree on: paho's version-2 callbacks, the protocol version and its
session flag (MQTT 5 takes the session from CONNECT, 3.1.1 from the client), credentials and TLS
with the broker's certificate verified. Callbacks, Last Will, in-flight window and reconnect
delays stay with the caller: they differ by job.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Optional

import paho.mqtt.client as paho


@dataclass(frozen=True)
class ClientTls:
    """TLS towards the broker: its CA (None: the system's), our certificate and key (mutual
    TLS), and ``insecure`` to skip the hostname check (development only)."""

    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    insecure: bool = False


def new_client(client_id: str = "", protocol: str = "5", persistent: bool = False,
               username: Optional[str] = None, password: Optional[str] = None,
               tls: Optional[ClientTls] = None) -> paho.Client:
    """A paho client, not connected.

    ``protocol`` is ``"5"`` or ``"3.1.1"``. ``persistent`` keeps a 3.1.1 session across
    connections (``clean_session=False``); with MQTT 5 the caller asks for it in CONNECT
    (``clean_start`` and a session expiry). ``password`` is used only with ``username``.
    Loading the TLS files raises ``ssl.SSLError`` or ``OSError`` (the caller names the option).
    """
    if protocol not in ("5", "3.1.1"):
        raise ValueError(f"MQTT protocol {protocol!r}: expected '5' or '3.1.1'")
    if protocol == "5":
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=paho.MQTTv5)
    else:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=paho.MQTTv311, clean_session=not persistent)
    if username:
        client.username_pw_set(username, password)
    if tls is not None:
        client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
                       cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if tls.insecure:
            client.tls_insecure_set(True)
    return client
