"""Python paho-mqtt with transport="websockets" against a Halyard WebSocket listener: subscribe, publish, receive.

Usage: python3 paho_websockets.py <host> <port> <path> <311|5> [ca.pem]   (ca.pem: wss, verified against it)
Prints "ok ..." and exits 0 on success; exits 1 otherwise, after 15 s at most. Works with paho-mqtt 1.6
(Debian's python3-paho-mqtt) and 2.x.
"""
import sys
import threading

import paho.mqtt.client as mqtt

host, port, path, version = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ca = sys.argv[5] if len(sys.argv) > 5 else None
protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
topic = f"paho/{version}/{'wss' if ca else 'ws'}"
payload = f"hello from paho over {'wss' if ca else 'ws'} v{version}"


def client(cid):
    kwargs = dict(client_id=cid, transport="websockets", protocol=protocol)
    if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2.x
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, **kwargs)
    else:
        c = mqtt.Client(**kwargs)
    c.ws_set_options(path=path)
    if ca:
        c.tls_set(ca_certs=ca)
    return c


connected, subscribed, received = threading.Event(), threading.Event(), threading.Event()
got = {}
sub = client(f"paho-sub-{version}")
sub.on_connect = lambda c, u, f, rc, *p: (c.subscribe(topic, qos=1), connected.set()) if (rc == 0 or getattr(rc, "value", 1) == 0) else None
sub.on_subscribe = lambda c, u, mid, granted, *p: subscribed.set()


def on_message(c, u, m):
    got["topic"], got["payload"] = m.topic, m.payload.decode()
    received.set()


sub.on_message = on_message
sub.connect(host, port, keepalive=30)
sub.loop_start()
if not subscribed.wait(15):
    print("FAILED: no SUBACK", file=sys.stderr)
    sys.exit(1)
pub = client(f"paho-pub-{version}")
pub.connect(host, port, keepalive=30)
pub.loop_start()
pub.publish(topic, payload, qos=1).wait_for_publish(15)
if not received.wait(15):
    print("FAILED: the message did not come back", file=sys.stderr)
    sys.exit(1)
if got != {"topic": topic, "payload": payload}:
    print(f"FAILED: got {got}", file=sys.stderr)
    sys.exit(1)
pub.loop_stop()
sub.loop_stop()
pub.disconnect()
sub.disconnect()
print(f"ok {topic}")
