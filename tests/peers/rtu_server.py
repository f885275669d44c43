"""A Modbus RTU server on a serial port for the RTU peer tests: pymodbus with several units.

Usage: python rtu_server.py DEVICE BAUD PARITY SPEC_JSON

DEVICE is a serial port (the tests use one end of a socat pty pair). SPEC_JSON maps unit ids
to a list of items in modbus_server.py's format, e.g. {"1": [{"table": "hr", "address": 0,
"type": "u16", "values": [7]}], "2": [...]}. Only those units answer; a request for any other
unit id is ignored (silence on the wire, as a dead unit on a real bus), never answered with
another unit's values. PARITY is N, E or O (a Linux pty refuses E and O: the tests use N);
8 data bits, 1 stop bit.

Each event is printed on stdout, flushed, with a monotonic timestamp in microseconds:
  RX n=N t=T                         bytes arriving from the line
  START unit=U fc=F address=A count=C t=T   a request decoded
  END unit=U fc=F t=T                an answer about to be sent
  SILENT unit=U t=T                  a request for a unit that does not exist, not answered
With RTU_SIMULATE_WIRE=1 in the environment (the RTU benchmark, scripts/bench-rtu), each
answer is held back by the time the request and the answer would take on a real line at BAUD
(a pty moves bytes instantly), so the bus's capacity is that of a real one.

A test reads these to prove that requests never overlap on the wire (no START while a served
request has no END yet, and exactly one request's bytes between two STARTs), that only read
function codes arrive, and how long the bus was busy.
"""

import asyncio
import json
import logging
import os
import sys
import time

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import StartAsyncSerialServer

from modbus_server import build


def now_us():
    return time.monotonic_ns() // 1000


SERVED = set()
SIMULATE_WIRE = os.environ.get("RTU_SIMULATE_WIRE") == "1"
BITS_PER_CHAR = {"N": 10, "E": 11, "O": 11}
LINE = {"baud": 19200, "bits": 10, "rx": 0}
# Set when the answer about to be sent is for a unit that does not exist: pymodbus 3.16 would
# answer it with a device-failure exception; a real bus has silence there, so it is dropped.
DROP = [False]


def trace_packet(sending, data):
    if not sending:
        LINE["rx"] += len(data)
        print(f"RX n={len(data)} t={now_us()}", flush=True)
        return data
    chars, LINE["rx"] = LINE["rx"] + len(data), 0
    if DROP[0]:
        DROP[0] = False
        return b""
    if SIMULATE_WIRE:
        # Blocking on purpose: the line is busy, nothing else can happen on it meanwhile.
        time.sleep(chars * LINE["bits"] / LINE["baud"])
    return data


def trace_pdu(sending, pdu):
    if sending:
        if pdu.dev_id not in SERVED:
            DROP[0] = True
            print(f"SILENT unit={pdu.dev_id} t={now_us()}", flush=True)
            return pdu
        print(f"END unit={pdu.dev_id} fc={pdu.function_code} t={now_us()}", flush=True)
    else:
        print(
            f"START unit={pdu.dev_id} fc={pdu.function_code} "
            f"address={getattr(pdu, 'address', '?')} count={getattr(pdu, 'count', '?')} "
            f"t={now_us()}",
            flush=True,
        )
    return pdu


async def main():
    device, baud, parity = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    spec = json.loads(sys.argv[4])
    LINE["baud"], LINE["bits"] = baud, BITS_PER_CHAR[parity]
    devices = {}
    for unit, items in spec.items():
        t = build(items)
        # Sequential blocks at 1 hold protocol address 0 (see modbus_server.py).
        devices[int(unit)] = ModbusDeviceContext(
            co=ModbusSequentialDataBlock(1, t["co"]),
            di=ModbusSequentialDataBlock(1, t["di"]),
            ir=ModbusSequentialDataBlock(1, t["ir"]),
            hr=ModbusSequentialDataBlock(1, t["hr"]),
        )
    SERVED.update(devices)
    context = ModbusServerContext(devices=devices, single=False)
    print(f"SERVING {device} units={sorted(devices)}", flush=True)
    await StartAsyncSerialServer(
        context=context,
        port=device,
        baudrate=baud,
        parity=parity,
        bytesize=8,
        stopbits=1,
        trace_packet=trace_packet,
        trace_pdu=trace_pdu,
    )


if __name__ == "__main__":
    # pymodbus logs the missing unit's lookup as an error with a traceback: not news here.
    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    asyncio.run(main())
