#!/usr/bin/env python3
"""Device stub for model {{model}} ({{name}}): the device side of the plugin's
line protocol (see {{plugin_source}}), to run under the simulator:

    certline device-sim --dir DIR --model {{model}} --serial 000001 \
        --credential device-link.pem --listen 127.0.0.1:0 --exec "python3 device.py"

The simulator does what the device's hardware does: TLS on the link, NVRAM
(the id), flash and the secure element. This program gets the link's plain
bytes on stdin, answers on stdout, and asks the chip over the Unix socket
$CERTLINE_DEVICE_SOCKET (one JSON object a line; ops id, identity, check,
store, sign, generate-key, log). One run per link session; stderr goes to the simulator's log.
"""
import json
import os
import socket
import sys


class Chip:
    """NVRAM, flash and secure element, kept by the simulator."""

    def __init__(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(os.environ["CERTLINE_DEVICE_SOCKET"])
        self.io = sock.makefile("rw", encoding="utf-8", newline="\n")

    def call(self, op, **fields):
        self.io.write(json.dumps(dict(op=op, **fields)) + "\n")
        self.io.flush()
        answer = json.loads(self.io.readline())
        if not answer.get("ok"):
            raise DeviceError(answer.get("error", "the chip refused"))
        return answer


class DeviceError(Exception):
    pass


def send(line):
    sys.stdout.buffer.write(line.encode() + b"\n")
    sys.stdout.buffer.flush()


def main():
    chip = Chip()
    greeted = False
    for raw in sys.stdin.buffer:
        words = raw.decode("utf-8", "replace").split()
        if not words:
            continue
        command, args = words[0], words[1:]
        try:
            if command == "HELLO":
                if greeted:
                    # The plugin keeps its endpoint for the session: one HELLO.
                    send("ERR HELLO twice in one session")
                    continue
                greeted = True
                send("HELLO " + chip.call("id")["id"])
            elif not greeted:
                send("ERR say HELLO first")
            elif command == "ID":
                identity = chip.call("identity")
                send("ID %s %s" % (identity["id"], identity["fingerprint"] or "-"))
            elif command == "WRITE" and len(args) == 4:
                pack = dict(
                    device_id=args[0],
                    root_pem=bytes.fromhex(args[1]).decode(),
                    chain_pem=bytes.fromhex(args[2]).decode(),
                    # "-": the device made its own key (GENKEY); the pack has none.
                    key_pem=None if args[3] == "-" else bytes.fromhex(args[3]).decode(),
                )
                try:
                    chip.call("check", pack=pack)
                except DeviceError as e:
                    send("FAILED %s" % e)
                    continue
                send("RECEIVED")
                try:
                    chip.call("store", pack=pack)
                    send("WRITTEN")
                except DeviceError as e:
                    send("FAILED %s" % e)
            elif command == "SIGN" and len(args) == 1:
                send("SIG " + chip.call("sign", challenge=args[0])["signature"])
            elif command == "GENKEY" and len(args) == 2:
                if args[0] != chip.call("id")["id"]:
                    send("ERR key request is for %s" % args[0])
                    continue
                send("CSR " + chip.call("generate-key", algorithm=args[1])["csr"])
            else:
                send("ERR unknown command %s" % command)
        except (DeviceError, ValueError) as e:
            send("ERR %s" % e)


if __name__ == "__main__":
    main()
