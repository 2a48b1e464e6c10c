#!/usr/bin/env python3
"""An EST client (RFC 7030) that shares no code with certline: Python
`cryptography` for keys, CSRs, CMS and certificates, `requests` for HTTPS.

Run by tests/est.rs against a real CA. It enrolls an id through a station
credential (the RA case), re-enrolls that id with the device's own identity
certificate, tries once more with the superseded certificate (which must be
refused), and asks for a server-generated key for a second id. It checks each
answer itself (the certificate names the id, holds the key, chains to the
root) and prints a JSON report for the Rust test to compare with the ledger.
"""

import argparse
import base64
import email.parser
import email.policy
import json
import os
import sys

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

PEN = 32473


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def csr_for(device_id, key):
    serial = device_id.split("-", 1)[1]
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, device_id),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return base64.b64encode(csr.public_bytes(serialization.Encoding.DER))


def certs_from(body):
    """The certificates of a base64 certs-only CMS."""
    return pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))


def check_cert(cert, device_id, public_key, root, issuing):
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    want = f"urn:dev:ops:{PEN}-{device_id}"
    if want not in uris.get_values_for_type(x509.UniformResourceIdentifier):
        fail(f"certificate does not name {want}")
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        fail("certificate does not hold the key")
    # The chain: device <- issuing <- root (signatures checked by cryptography).
    cert.verify_directly_issued_by(issuing)
    issuing.verify_directly_issued_by(root)


def pem_file(path, *certs):
    with open(path, "wb") as out:
        for cert in certs:
            out.write(cert.public_bytes(serialization.Encoding.PEM))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--station", required=True, help="station credential PEM (chain + key)")
    parser.add_argument("--id", required=True)
    parser.add_argument("--serverkeygen-id", required=True)
    args = parser.parse_args()
    est = args.url.rstrip("/") + "/.well-known/est/"
    session = requests.Session()
    session.verify = args.root
    # The root given, never a CA bundle named in the environment (requests lets those win).
    session.trust_env = False
    headers = {"Content-Type": "application/pkcs10"}
    station = (args.station, args.station)

    # cacerts: the issuing CA and the root.
    answer = session.get(est + "cacerts", cert=station)
    answer.raise_for_status()
    with open(args.root, "rb") as f:
        root = x509.load_pem_x509_certificate(f.read())
    cas = certs_from(answer.content)
    issuing = next(c for c in cas if c.subject != c.issuer)
    if root not in cas:
        fail("cacerts does not hold the root")

    # simpleenroll by the station (RA).
    key = ec.generate_private_key(ec.SECP256R1())
    answer = session.post(est + "simpleenroll", data=csr_for(args.id, key), headers=headers, cert=station)
    if answer.status_code != 200:
        fail(f"simpleenroll: {answer.status_code} {answer.text}")
    (first,) = certs_from(answer.content)
    check_cert(first, args.id, key.public_key(), root, issuing)

    # simplereenroll by the device, with its identity certificate.
    chain = os.path.join(args.work, "py-device-chain.pem")
    key_file = os.path.join(args.work, "py-device-key.pem")
    pem_file(chain, first, issuing)
    with open(key_file, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    new_key = ec.generate_private_key(ec.SECP256R1())
    answer = session.post(
        est + "simplereenroll", data=csr_for(args.id, new_key), headers=headers, cert=(chain, key_file)
    )
    if answer.status_code != 200:
        fail(f"simplereenroll: {answer.status_code} {answer.text}")
    (second,) = certs_from(answer.content)
    check_cert(second, args.id, new_key.public_key(), root, issuing)
    if second.serial_number == first.serial_number:
        fail("re-enrollment reused the serial")

    # The superseded certificate may not re-enroll again (a new session: a new handshake).
    again = requests.Session()
    again.trust_env = False
    again = again.post(
        est + "simplereenroll",
        data=csr_for(args.id, new_key),
        headers=headers,
        cert=(chain, key_file),
        verify=args.root,
    )
    if not again.text.startswith("certificate_revoked: "):
        fail(f"a superseded certificate re-enrolled: {again.status_code} {again.text}")

    # serverkeygen: multipart/mixed with the PKCS#8 key and the certificate.
    throwaway = ec.generate_private_key(ec.SECP256R1())
    answer = session.post(
        est + "serverkeygen", data=csr_for(args.serverkeygen_id, throwaway), headers=headers, cert=station
    )
    if answer.status_code != 200:
        fail(f"serverkeygen: {answer.status_code} {answer.text}")
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
        b"Content-Type: " + answer.headers["Content-Type"].encode() + b"\r\n\r\n" + answer.content
    )
    parts = {part.get_content_type(): part for part in message.iter_parts()}
    server_key = serialization.load_der_private_key(
        base64.b64decode(parts["application/pkcs8"].get_payload()), password=None
    )
    (generated,) = certs_from(parts["application/pkcs7-mime"].get_payload())
    check_cert(generated, args.serverkeygen_id, server_key.public_key(), root, issuing)

    hexserial = lambda cert: format(cert.serial_number, "x").rjust(32, "0")
    print(
        json.dumps(
            {
                "enrolled_serial": hexserial(first),
                "reenrolled_serial": hexserial(second),
                "revoked_reenroll_status": again.status_code,
                "serverkeygen_serial": hexserial(generated),
            }
        )
    )


if __name__ == "__main__":
    main()
