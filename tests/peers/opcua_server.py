"""An OPC UA server for the OPC UA peer tests: python asyncua with known nodes.

Usage: python opcua_server.py PORT --control FILE [--secure PKI_DIR --user NAME:PASSWORD
                                                  [--policies P1,P2,…]]

Namespace "urn:ms5-edge:test" (index 2) holds, with these values:
  ns=2;s=Line.Running  Boolean  True
  ns=2;i=1001          UInt32   123456  (good count, numeric node id)
  ns=2;s=Line.Temp     Int16    -40
  ns=2;s=Line.Speed    Float    87.5
  ns=2;s=Line.Energy   Double   1234.5678
  ns=2;s=Line.Faults   Int32[]  [5, -2147483648, 0]
  ns=2;s=Line.Mode     Int32    3  (a scalar Int32 next to the array: the ValueRank check)

Control: every 50 ms the server reads FILE (JSON, may be missing): {"bad": ["Line.Speed"],
"uncertain": ["Line.Temp"]} gives those nodes that status code from then on (their values
otherwise unchanged); {"stall_ms": 600} holds every client Read back that long before it is
answered (a slow server, "STALLED <ms>" once answered); it prints "STATUS <the file's text>" when it applied a new control.

Every Write service request is printed as "WRITE <node>" (and counted in "WRITES <n>"), so a
test can assert the client never wrote. With --secure, the only endpoint is Basic256Sha256
SignAndEncrypt with a user name and password (--policies: these asyncua SecurityPolicyType
names instead, e.g. Aes128Sha256RsaOaep_SignAndEncrypt,Aes256Sha256RsaPss_Sign); the server's certificate is created in PKI_DIR
(server_cert.der / server_key.pem) and the client's certificate is accepted as is.
"""

import asyncio
import datetime
import ipaddress
import json
import os
import sys

from asyncua import Server, ua
from asyncua.common.callback import CallbackType
from asyncua.crypto.permission_rules import User, UserRole


def parse():
    argv = sys.argv[1:]
    opts = {"port": int(argv[0]), "control": None, "secure": None, "user": None, "policies": None}
    i = 1
    while i < len(argv):
        opts[argv[i].lstrip("-")] = argv[i + 1]
        i += 2
    return opts


class Users:
    def __init__(self, name, password):
        self.name, self.password = name, password

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username == self.name and password == self.password:
            return User(role=UserRole.User)
        return None


async def make_cert(pki):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    os.makedirs(pki, exist_ok=True)
    cert_path = os.path.join(pki, "server_cert.der")
    key_path = os.path.join(pki, "server_key.pem")
    if os.path.exists(cert_path):
        return cert_path, key_path
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ms5 test server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier("urn:ms5-edge:test-server"),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=True, key_encipherment=True,
                data_encipherment=True, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.DER))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


async def main():
    opts = parse()
    user_manager = None
    if opts["user"]:
        name, password = opts["user"].split(":", 1)
        user_manager = Users(name, password)
    server = Server(user_manager=user_manager)
    await server.init()
    server.set_endpoint("opc.tcp://127.0.0.1:%d/" % opts["port"])
    server.set_server_name("ms5-edge test server")
    await server.set_application_uri("urn:ms5-edge:test-server")
    if opts["secure"]:
        cert, key = await make_cert(opts["secure"])
        await server.load_certificate(cert)
        await server.load_private_key(key)
        names = (opts["policies"] or "Basic256Sha256_SignAndEncrypt").split(",")
        server.set_security_policy([getattr(ua.SecurityPolicyType, n) for n in names])
        server.set_security_IDs(["Username"])
    else:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_security_IDs(["Anonymous"])
    idx = await server.register_namespace("urn:ms5-edge:test")
    assert idx == 2, idx
    line = await server.nodes.objects.add_object(ua.NodeId("Line", idx), ua.QualifiedName("Line", idx))
    nodes = {}

    async def var(key, node_id, value, vtype):
        nodes[key] = await line.add_variable(node_id, ua.QualifiedName(key, idx), ua.Variant(value, vtype))
        await nodes[key].set_writable(True)  # writable, so a Write would succeed and be counted

    await var("Line.Running", ua.NodeId("Line.Running", idx), True, ua.VariantType.Boolean)
    await var("GoodCount", ua.NodeId(1001, idx), 123456, ua.VariantType.UInt32)
    await var("Line.Temp", ua.NodeId("Line.Temp", idx), -40, ua.VariantType.Int16)
    await var("Line.Speed", ua.NodeId("Line.Speed", idx), 87.5, ua.VariantType.Float)
    await var("Line.Energy", ua.NodeId("Line.Energy", idx), 1234.5678, ua.VariantType.Double)
    await var("Line.Faults", ua.NodeId("Line.Faults", idx), [5, -2147483648, 0], ua.VariantType.Int32)
    await var("Line.Mode", ua.NodeId("Line.Mode", idx), 3, ua.VariantType.Int32)
    values = {k: (await n.read_data_value()).Value for k, n in nodes.items()}

    writes = 0

    def count_write(event, dispatcher):
        # Only Write requests of client sessions (the server updates its own status nodes too).
        nonlocal writes
        if not event.is_external:
            return
        for w in event.request_params.NodesToWrite:
            writes += 1
            print("WRITE %s" % w.NodeId.to_string(), flush=True)
        print("WRITES %d" % writes, flush=True)

    server.iserver.subscribe_server_callback(CallbackType.PreWrite, count_write)

    stall = {"ms": 0}

    async def slow_read(event, dispatcher):
        if event.is_external and stall["ms"]:
            ms = stall["ms"]
            await asyncio.sleep(ms / 1000)
            print("STALLED %d" % ms, flush=True)

    server.iserver.subscribe_server_callback(CallbackType.PreRead, slow_read)

    applied = None
    async with server:
        print("READY %d" % opts["port"], flush=True)
        while True:
            await asyncio.sleep(0.05)
            control, raw = {}, "{}"
            if opts["control"] and os.path.exists(opts["control"]):
                try:
                    with open(opts["control"]) as f:
                        raw = f.read().strip()
                    control = json.loads(raw)
                except (OSError, ValueError):
                    continue
            if control == applied:
                continue
            for key, node in nodes.items():
                if key in control.get("bad", []):
                    status = ua.StatusCode(ua.StatusCodes.BadSensorFailure)
                elif key in control.get("uncertain", []):
                    status = ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue)
                else:
                    status = ua.StatusCode(ua.StatusCodes.Good)
                await server.write_attribute_value(node.nodeid, ua.DataValue(values[key], StatusCode=status))
            stall["ms"] = int(control.get("stall_ms", 0))
            applied = control
            print("STATUS %s" % raw, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
