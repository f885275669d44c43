"""A Logix tag server for the EtherNet/IP peer tests: cpppo's simulator with known values.

Usage: python enip_server.py PORT 'TAG=TYPE[N]' ... --values '{"TAG": value-or-list, ...}'

cpppo's own command line (`python -m cpppo.server.enip`) starts every tag at zero; this wrapper
runs the same `main()` with an Attribute class that starts each named tag at the given value,
so the Rust test knows what the controller holds without ever writing to it (the gateway never
writes to a PLC, and neither does its test).
"""

import json
import sys

from cpppo.server.enip import device
from cpppo.server.enip.main import main


def run():
    argv = sys.argv[1:]
    values = {}
    if "--values" in argv:
        i = argv.index("--values")
        values = json.loads(argv[i + 1])
        del argv[i : i + 2]
    port, tags = argv[0], argv[1:]

    class Seeded(device.Attribute):
        def __init__(self, name, type_cls, default=None, **kwds):
            if name in values:
                default = values[name]
            super().__init__(name, type_cls, default=default, **kwds)

    return main(
        argv=["--address", "127.0.0.1:%s" % port] + tags,
        attribute_class=Seeded,
    )


if __name__ == "__main__":
    sys.exit(run())
