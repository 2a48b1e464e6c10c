"""The certline device plugin for model W2 (acme-snake), made by
`certline plugin new --lang python`, built with componentize-py against the
WIT in wit/ (see try.sh). It speaks a line-based protocol, one command a line
and one answer a line, over the link the host lends it (mutual TLS is already
done, the plugin sees plain bytes):

    line                                   device
    HELLO certline/1                       HELLO <id>            once per session
    ID                                     ID <id> <sha256 hex of the certificate, or ->
    WRITE <id> <root> <chain> <key|->      RECEIVED, then WRITTEN or FAILED <reason>
           (the PEMs hex-encoded; - when   (or FAILED <reason> at once: not for me)
           the device made its own key)
    SIGN <challenge hex>                   SIG <signature hex>
    GENKEY <id> <algorithm>                CSR <PKCS#10 DER hex>  (keys born in the device)
    anything the device cannot serve       ERR <reason>

Change the protocol here and in device.py (the device stub the simulator runs
with `certline device-sim --exec`) together.

The host makes a fresh instance of the plugin for every session (read the
identity, write, read it back, prove possession) and throws it away
afterwards, so the module's globals live exactly one session: `session`
below says HELLO once per session, not once per call. The link is lent to
each call only. An exception other than `Err(...)` is logged with its
traceback through host.log before the plugin traps.
"""
import traceback

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.device import (
    Error_Device, Error_Link, Error_Protocol, Identity, KeyAlgorithm, PluginInfo,
)
from wit_world.imports import host

NAME = "{{name}}"
VERSION = "0.1.0"
MODELS = ["{{model}}"]

HELLO_MS = 10_000    # how long the device may take to greet
ANSWER_MS = 10_000   # to answer a question
WRITE_MS = 30_000    # to write its flash
MAX_LINE = 64 * 1024  # the longest line the device may send
ALGORITHMS = {KeyAlgorithm.P256: "p256", KeyAlgorithm.P384: "p384", KeyAlgorithm.ED25519: "ed25519"}


def protocol_error(what):
    return Err(Error_Protocol(what))


class Session:
    """The line protocol for one session; `link` is the link of the running call."""

    def __init__(self):
        self.link = None
        self.inbox = b""
        self.greeted = False

    def send(self, line):
        try:
            self.link.write(line.encode() + b"\n")
        except Err as e:
            raise Err(Error_Link(e.value))

    def read_line(self, timeout_ms):
        while b"\n" not in self.inbox:
            if len(self.inbox) > MAX_LINE:
                raise protocol_error("the device sent a line longer than %d bytes" % MAX_LINE)
            try:
                self.inbox += self.link.read(4096, timeout_ms)
            except Err as e:
                raise Err(Error_Link(e.value))
        line, self.inbox = self.inbox.split(b"\n", 1)
        try:
            return line.decode().rstrip()
        except UnicodeDecodeError:
            raise protocol_error("the device sent a line that is not UTF-8")

    def ask(self, line, timeout_ms=ANSWER_MS):
        """Sends one command and returns the answer's word and the rest."""
        if not self.greeted:
            self.send("HELLO certline/1")
            hello = self.read_line(HELLO_MS)
            if not hello.startswith("HELLO "):
                raise protocol_error("expected HELLO from the device, got %r" % hello)
            self.greeted = True
        self.send(line)
        return self.answer(timeout_ms)

    def answer(self, timeout_ms):
        word, _, rest = self.read_line(timeout_ms).partition(" ")
        if word in ("ERR", "FAILED"):
            raise Err(Error_Device(rest))
        return word, rest


session = Session()


def call(name, link, body):
    """Runs one export's body with `link` lent to the session."""
    session.link = link
    try:
        return body()
    except Err:
        raise
    except Exception:
        host.log(host.Level.ERROR, "%s raised: %s" % (name, traceback.format_exc()))
        raise
    finally:
        session.link = None


def expect(word, rest, wanted):
    if word != wanted:
        raise protocol_error("expected %s, the device sent %s %s" % (wanted, word, rest))
    return rest


def hexed(text):
    return text.encode().hex()


def unhex(word, rest):
    try:
        return bytes.fromhex(rest)
    except ValueError:
        raise protocol_error("%s with a value that is not hex" % word)


class Device(exports.Device):
    def info(self):
        return PluginInfo(name=NAME, version=VERSION, models=MODELS)

    def read_identity(self, link):
        def body():
            rest = expect(*session.ask("ID"), "ID")
            device_id, _, fingerprint = rest.partition(" ")
            return Identity(device_id=device_id, fingerprint=None if fingerprint in ("", "-") else fingerprint)
        return call("read-identity", link, body)

    def write_pack(self, link, pack):
        def body():
            key = "-" if pack.key_pem is None else hexed(pack.key_pem)
            command = "WRITE %s %s %s %s" % (pack.device_id, hexed(pack.root_pem), hexed(pack.chain_pem), key)
            expect(*session.ask(command), "RECEIVED")
            host.report(host.Stage.RECEIVED)
            expect(*session.answer(WRITE_MS), "WRITTEN")
        return call("write-pack", link, body)

    def prove_possession(self, link, challenge):
        def body():
            return unhex("SIG", expect(*session.ask("SIGN " + challenge.hex()), "SIG"))
        return call("prove-possession", link, body)

    def generate_key(self, link, request):
        def body():
            command = "GENKEY %s %s" % (request.device_id, ALGORITHMS[request.algorithm])
            return unhex("CSR", expect(*session.ask(command), "CSR"))
        return call("generate-key", link, body)
