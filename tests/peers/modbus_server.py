"""A Modbus TCP server for the peer tests: pymodbus holding golden values.

Usage: python modbus_server.py PORT UNIT_ID SPEC_JSON

SPEC_JSON is a list of {"table": "co|di|ir|hr", "address": N, "type": "u16|i16|u32|i32|u64|i64|
f32|f64|bool", "order": "ABCD|CDAB|BADC|DCBA", "values": [..]} (consecutive elements for arrays),
or {"table": "hr|ir", "address": N, "raw": [word, ...]} for registers set word by word.
Every table holds addresses 0..1999; a read beyond that draws an illegal-address exception.
Only device UNIT_ID exists: a request for another unit id draws an exception (pymodbus 3.16
answers "device failure", 0x04), never another unit's values.

Every request received is printed on stdout, flushed before the answer is sent, as
`REQUEST unit=U fc=F address=A count=C`, so a test can count the requests a poll made.

The encoding here is written from SPEC §2/§6 directly, with Python's `struct`, and shares no
code with the gateway: bytes A..H are the big-endian value; CDAB/DCBA reverse the register order;
BADC/DCBA swap the two bytes of each register.
"""

import asyncio
import json
import logging
import struct
import sys

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import StartAsyncTcpServer

FORMATS = {
    "u16": ">H", "i16": ">h", "u32": ">I", "i32": ">i",
    "u64": ">Q", "i64": ">q", "f32": ">f", "f64": ">d",
}
SIZE = 2000


def registers(type_, order, value):
    data = struct.pack(FORMATS[type_], value)
    regs = [data[i:i + 2] for i in range(0, len(data), 2)]
    if order in ("BADC", "DCBA"):
        regs = [r[::-1] for r in regs]
    if order in ("CDAB", "DCBA"):
        regs = regs[::-1]
    return [int.from_bytes(r, "big") for r in regs]


def build(spec):
    tables = {"co": [False] * SIZE, "di": [False] * SIZE, "ir": [0] * SIZE, "hr": [0] * SIZE}
    for item in spec:
        table, address = tables[item["table"]], item["address"]
        if "raw" in item:
            words = item["raw"]
        elif item["table"] in ("co", "di"):
            words = [bool(v) for v in item["values"]]
        else:
            words = []
            for v in item["values"]:
                words += registers(item["type"], item.get("order", "ABCD"), v)
        table[address:address + len(words)] = words
    return tables


async def main():
    port, unit, spec = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    t = build(spec)
    # pymodbus's sequential block at address 1 holds protocol address 0 (its data model is
    # 1-based); the peer test reads protocol addresses, so a mix-up here would fail it.
    device = ModbusDeviceContext(
        co=ModbusSequentialDataBlock(1, t["co"]),
        di=ModbusSequentialDataBlock(1, t["di"]),
        ir=ModbusSequentialDataBlock(1, t["ir"]),
        hr=ModbusSequentialDataBlock(1, t["hr"]),
    )
    context = ModbusServerContext(devices={unit: device}, single=False)
    await StartAsyncTcpServer(
        context=context, address=("127.0.0.1", port), trace_pdu=trace_request
    )


def trace_request(sending, pdu):
    """Logs each received request (the hook sees answers too: `sending` is then true)."""
    if not sending:
        print(
            f"REQUEST unit={pdu.dev_id} fc={pdu.function_code} "
            f"address={getattr(pdu, 'address', '?')} count={getattr(pdu, 'count', '?')}",
            flush=True,
        )
    return pdu


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
