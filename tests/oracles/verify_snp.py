#!/usr/bin/env python3
"""Independent oracle: verify an SEV-SNP report and its VCEK/ASK/ARK chain with the
Python `cryptography` package, without any opencvm code.

Usage: verify_snp.py REPORT CHAIN_PEM
Checks: ARK self-signature, ASK by ARK, VCEK by ASK (RSASSA-PSS SHA-384, salt 48);
report signature (ECDSA P-384/SHA-384 over bytes 0x000..0x29F, little-endian R/S);
VCEK SPL extensions == REPORTED_TCB; VCEK hwID == CHIP_ID. Prints "OK" and exits 0,
or prints the failed check and exits 1.
"""
import re
import sys
import warnings

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

AMD = "1.3.6.1.4.1.3704.1."


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def pss_verify(issuer, cert):
    issuer.public_key().verify(
        cert.signature,
        cert.tbs_certificate_bytes,
        padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
        hashes.SHA384(),
    )


def ext(cert, suffix):
    for e in cert.extensions:
        if e.oid.dotted_string == AMD + suffix:
            return e.value.value
    return None


def der_int(raw):
    if raw[0] != 0x02:
        fail("SPL extension is not an INTEGER")
    return int.from_bytes(raw[2 : 2 + raw[1]], "big")


def main():
    report = open(sys.argv[1], "rb").read()
    pem = open(sys.argv[2], "rb").read()
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem, re.S)
    with warnings.catch_warnings():
        # AMD's VCEKs have serial number 0, which RFC 5280 disallows.
        warnings.simplefilter("ignore")
        certs = [x509.load_pem_x509_certificate(b) for b in blocks]
    cn = lambda c: c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    by = {cn(c): c for c in certs}
    vek = by.get("SEV-VCEK")
    ark = next(c for c in certs if cn(c).startswith("ARK-"))
    ask = next(c for c in certs if cn(c).startswith("SEV-") and cn(c) != "SEV-VCEK")
    if vek is None or len(report) != 1184:
        fail("need a VCEK in the chain and a 1184-byte report")
    try:
        pss_verify(ark, ark)
        pss_verify(ark, ask)
        pss_verify(ask, vek)
    except Exception as e:  # noqa: BLE001 - any failure is a failed check
        fail(f"certificate chain: {e!r}")
    r = int.from_bytes(report[0x2A0:0x2E8], "little")
    s = int.from_bytes(report[0x2E8:0x330], "little")
    try:
        vek.public_key().verify(encode_dss_signature(r, s), report[:0x2A0], ec.ECDSA(hashes.SHA384()))
    except Exception as e:  # noqa: BLE001
        fail(f"report signature: {e!r}")
    tcb = report[0x180:0x188]
    turin = ext(vek, "3.9") is not None
    if turin:
        want = {"3.9": tcb[0], "3.1": tcb[1], "3.2": tcb[2], "3.3": tcb[3], "3.8": tcb[7]}
    else:
        want = {"3.1": tcb[0], "3.2": tcb[1], "3.3": tcb[6], "3.8": tcb[7]}
    for suffix, value in want.items():
        if der_int(ext(vek, suffix)) != value:
            fail(f"SPL {suffix} != REPORTED_TCB")
    hwid = ext(vek, "4")
    if hwid != report[0x1A0 : 0x1A0 + len(hwid)]:
        fail("hwID != CHIP_ID")
    print("OK")


if __name__ == "__main__":
    main()
