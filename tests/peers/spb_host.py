"""An independent Sparkplug B host for tests/sparkplug.rs: decodes with pysparkplug (pinned in
target/spb-venv by scripts/test), acts as primary host and commander.

Usage: spb_host.py BROKER_PORT HOST_ID
Prints one JSON line per message on spBv1.0/# (and a {"ready": true} line once subscribed);
reads JSON lines on stdin:
  {"state": true|false, "timestamp": ms}          publish spBv1.0/STATE/HOST_ID, retained, QoS 1
  {"ncmd": [group, edge], "metrics": [[name, datatype, value], ...]}
  {"dcmd": [group, edge, device], "metrics": [[name, datatype, value], ...]}
"""

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pysparkplug as spb
from pysparkplug._protobuf import sparkplug_b_pb2 as pb

port = int(sys.argv[1])
host_id = sys.argv[2]
births = {}  # (group, edge, device or None) -> DBirth/NBirth, for aliases
lock = threading.Lock()


def out(obj):
    with lock:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()


def plain(v):
    if isinstance(v, tuple):
        return [plain(x) for x in v]
    return v


def on_message(client, userdata, msg):
    now = int(time.time() * 1000)
    parts = msg.topic.split("/")
    rec = {"topic": msg.topic, "recv_ms": now, "retain": bool(msg.retain), "qos": msg.qos}
    if parts[1] == "STATE":
        rec["type"] = "STATE"
        rec["state"] = json.loads(msg.payload.decode())
        out(rec)
        return
    group, kind, edge = parts[1], parts[2], parts[3]
    device = parts[4] if len(parts) > 4 else None
    rec.update(type=kind, group=group, edge=edge, device=device)
    try:
        raw = pb.Payload.FromString(msg.payload)
        rec["raw_names"] = [m.name if m.HasField("name") else None for m in raw.metrics]
        rec["raw_datatypes"] = [m.datatype if m.HasField("datatype") else None for m in raw.metrics]
        quality = []
        for m in raw.metrics:
            q = None
            if m.HasField("properties"):
                for k, v in zip(m.properties.keys, m.properties.values):
                    if k == "quality":
                        q = v.int_value
            quality.append(q)
        key = (group, edge, device)
        classes = {"NBIRTH": spb.NBirth, "DBIRTH": spb.DBirth, "NDEATH": spb.NDeath,
                   "DDEATH": spb.DDeath, "NDATA": spb.NData, "DDATA": spb.DData,
                   "NCMD": spb.NCmd, "DCMD": spb.DCmd}
        cls = classes[kind]
        if kind in ("NDATA", "DDATA"):
            p = cls.decode(msg.payload, birth=births.get(key))
        else:
            p = cls.decode(msg.payload)
        if kind in ("NBIRTH", "DBIRTH"):
            births[key] = p
        rec["seq"] = getattr(p, "seq", None)
        rec["timestamp"] = getattr(p, "timestamp", None)
        decoded = getattr(p, "metrics", None)
        if decoded is None and hasattr(p, "bd_seq_metric"):
            decoded = (p.bd_seq_metric,)
        metrics = []
        for m, q in zip(decoded or (), quality):
            metrics.append({
                "name": m.name, "alias": m.alias, "datatype": int(m.datatype),
                "value": plain(m.value), "is_null": m.is_null,
                "is_historical": m.is_historical, "timestamp": m.timestamp, "quality": q,
            })
        rec["metrics"] = metrics
    except Exception as e:  # a payload the independent decoder refuses is a test failure
        rec["decode_error"] = repr(e)
    out(rec)


def on_connect(client, userdata, flags, rc):
    client.subscribe("spBv1.0/#", qos=1)


def on_subscribe(client, userdata, mid, granted):
    out({"ready": True})


client = mqtt.Client(client_id="spb-test-host-" + host_id, clean_session=True)
client.on_message = on_message
client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.connect("127.0.0.1", port, keepalive=10)
client.loop_start()


def metrics_of(items):
    ms = []
    for name, dt, value in items:
        d = spb.DataType[dt]
        ms.append(spb.Metric(timestamp=spb.get_current_timestamp(), name=name, datatype=d, value=value))
    return tuple(ms)


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    cmd = json.loads(line)
    if "state" in cmd:
        body = json.dumps({"online": cmd["state"], "timestamp": cmd["timestamp"]})
        client.publish("spBv1.0/STATE/" + host_id, body, qos=1, retain=True).wait_for_publish()
        out({"sent": "state", "online": cmd["state"]})
    elif "ncmd" in cmd:
        g, e = cmd["ncmd"]
        p = spb.NCmd(timestamp=spb.get_current_timestamp(), metrics=metrics_of(cmd["metrics"]))
        client.publish(f"spBv1.0/{g}/NCMD/{e}", p.encode(include_dtypes=True), qos=0).wait_for_publish()
        out({"sent": "ncmd"})
    elif "dcmd" in cmd:
        g, e, d = cmd["dcmd"]
        p = spb.DCmd(timestamp=spb.get_current_timestamp(), metrics=metrics_of(cmd["metrics"]))
        client.publish(f"spBv1.0/{g}/DCMD/{e}/{d}", p.encode(include_dtypes=True), qos=0).wait_for_publish()
        out({"sent": "dcmd"})
client.loop_stop()
