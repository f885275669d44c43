"""The OPC UA server of the acquisition benchmark (scripts/bench-opcua): python asyncua with
NODES variable nodes whose values keep changing.

Usage: python opcua_bench_server.py PORT --nodes N [--secure PKI_DIR --user NAME:PASSWORD]
       python opcua_bench_server.py --list N      prints "node_id type" per node, no server

Node k (0 ≤ k < N) belongs to equipment k // 100 (signal k % 100); even equipment have string
node ids (ns=2;s=Bench.E<e>.S<j>), odd ones numeric ids (ns=2;i=<100000 + k>). Signal 0 is a
Boolean (running, always True), signal 1 a UInt32 (good count, +1 per change), the others cycle through
Int16, UInt16, Int32, UInt32, Float, Double, Boolean, Int64.

Every 100 ms a tenth of the nodes (round robin) gets a new value, so every value changes once a
second. With --secure the only endpoint is Basic256Sha256 SignAndEncrypt with a user name (the
certificate handling is tests/peers/opcua_server.py's). Prints "READY <port>" when serving.
"""

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CYCLE = ["Int16", "UInt16", "Int32", "UInt32", "Float", "Double", "Boolean", "Int64"]
CONFIG_TYPE = {
    "Boolean": "bool", "Int16": "i16", "UInt16": "u16", "Int32": "i32", "UInt32": "u32",
    "Int64": "i64", "Float": "f32", "Double": "f64",
}


def layout(n):
    """[(node id text, UA type name)] for nodes 0..n."""
    out = []
    for k in range(n):
        e, j = divmod(k, 100)
        node = "ns=2;s=Bench.E%d.S%d" % (e, j) if e % 2 == 0 else "ns=2;i=%d" % (100000 + k)
        vtype = "Boolean" if j == 0 else "UInt32" if j == 1 else CYCLE[(j - 2) % len(CYCLE)]
        out.append((node, vtype))
    return out


def value(vtype, step, k):
    if k % 100 == 0:
        return True  # running: the line runs throughout
    if vtype == "Boolean":
        return (step + k) % 2 == 0
    if vtype == "Float" or vtype == "Double":
        return (step * 0.25 + k) % 1000.0
    if vtype == "Int16":
        return (step + k) % 60000 - 30000
    if vtype == "UInt16":
        return (step + k) % 65000
    return step + k


async def main():
    from asyncua import Server, ua
    from opcua_server import Users, make_cert

    argv = sys.argv[1:]
    port = int(argv[0])
    opts = dict(zip([a.lstrip("-") for a in argv[1::2]], argv[2::2]))
    n = int(opts.get("nodes", "1000"))
    user_manager = None
    if "user" in opts:
        name, password = opts["user"].split(":", 1)
        user_manager = Users(name, password)
    server = Server(user_manager=user_manager)
    await server.init()
    server.set_endpoint("opc.tcp://127.0.0.1:%d/" % port)
    server.set_server_name("ms5-edge bench server")
    await server.set_application_uri("urn:ms5-edge:test-server")
    if "secure" in opts:
        cert, key = await make_cert(opts["secure"])
        await server.load_certificate(cert)
        await server.load_private_key(key)
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        server.set_security_IDs(["Username"])
    else:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_security_IDs(["Anonymous"])
    idx = await server.register_namespace("urn:ms5-edge:test")
    assert idx == 2, idx
    folder = await server.nodes.objects.add_object(ua.NodeId("Bench", idx), ua.QualifiedName("Bench", idx))
    nodes = []
    for k, (text, vtype) in enumerate(layout(n)):
        vt = getattr(ua.VariantType, vtype)
        node = await folder.add_variable(ua.NodeId.from_string(text), ua.QualifiedName("n%d" % k, idx),
                                         ua.Variant(value(vtype, 0, k), vt))
        nodes.append((node.nodeid, vtype, vt))

    async with server:
        print("READY %d" % port, flush=True)
        step, cursor, share = 0, 0, max(1, n // 10)
        while True:
            await asyncio.sleep(0.1)
            step += 1
            for _ in range(share):
                nodeid, vtype, vt = nodes[cursor]
                await server.write_attribute_value(
                    nodeid, ua.DataValue(ua.Variant(value(vtype, step, cursor), vt)))
                cursor = (cursor + 1) % n


if __name__ == "__main__":
    if sys.argv[1:2] == ["--list"]:
        for node, vtype in layout(int(sys.argv[2])):
            print(node, CONFIG_TYPE[vtype])
    else:
        asyncio.run(main())
