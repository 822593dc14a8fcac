#!/usr/bin/env python3
"""Independent oracle: private JWKs (RFC 7518) made with the Python `cryptography`
package, without any opencvm code, and a comparison of PKCS#8 private keys.

Usage:
  jwk_keys.py generate DIR
      Writes into DIR:
        rsa.jwk.json           an RSA-2048 private JWK (n, e, d, p, q, dp, dq, qi)
        rsa.pk8                the same key as PKCS#8 DER
        rsa-mismatch.jwk.json  rsa.jwk.json with d taken from another RSA-2048 key
        ec.jwk.json            a P-256 private JWK (crv, x, y, d)
        ec.pk8                 the same key as PKCS#8 DER
        ec-mismatch.jwk.json   ec.jwk.json with d taken from another P-256 key
  jwk_keys.py same-private-key DER_FILE_A DER_FILE_B
      Loads two PKCS#8 DER private keys and prints "same" (exit 0) when their private
      numbers are equal, "different" (exit 1) otherwise.
"""
import base64
import json
import pathlib
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def b64(n, length=None):
    if length is None:
        length = max(1, (n.bit_length() + 7) // 8)
    return base64.urlsafe_b64encode(n.to_bytes(length, "big")).rstrip(b"=").decode()


def pkcs8(key):
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def rsa_jwk(key):
    p = key.private_numbers()
    return {
        "kty": "RSA",
        "n": b64(p.public_numbers.n),
        "e": b64(p.public_numbers.e),
        "d": b64(p.d),
        "p": b64(p.p),
        "q": b64(p.q),
        "dp": b64(p.dmp1),
        "dq": b64(p.dmq1),
        "qi": b64(p.iqmp),
    }


def ec_jwk(key):
    p = key.private_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64(p.public_numbers.x, 32),
        "y": b64(p.public_numbers.y, 32),
        "d": b64(p.private_value, 32),
    }


def generate(out):
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = rsa_jwk(r)
    (out / "rsa.jwk.json").write_text(json.dumps(jwk))
    (out / "rsa.pk8").write_bytes(pkcs8(r))
    bad = dict(jwk, d=rsa_jwk(other)["d"])
    (out / "rsa-mismatch.jwk.json").write_text(json.dumps(bad))
    e = ec.generate_private_key(ec.SECP256R1())
    other_e = ec.generate_private_key(ec.SECP256R1())
    jwk = ec_jwk(e)
    (out / "ec.jwk.json").write_text(json.dumps(jwk))
    (out / "ec.pk8").write_bytes(pkcs8(e))
    bad = dict(jwk, d=ec_jwk(other_e)["d"])
    (out / "ec-mismatch.jwk.json").write_text(json.dumps(bad))


def numbers(key):
    n = key.private_numbers()
    if isinstance(key, rsa.RSAPrivateKey):
        return ("RSA", n.public_numbers.n, n.public_numbers.e, n.d, n.p, n.q, n.dmp1, n.dmq1, n.iqmp)
    return ("EC", key.curve.name, n.public_numbers.x, n.public_numbers.y, n.private_value)


def same(a, b):
    ka = serialization.load_der_private_key(pathlib.Path(a).read_bytes(), password=None)
    kb = serialization.load_der_private_key(pathlib.Path(b).read_bytes(), password=None)
    if numbers(ka) == numbers(kb):
        print("same")
        return
    print("different")
    sys.exit(1)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "generate":
        generate(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "same-private-key":
        same(sys.argv[2], sys.argv[3])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - any failure is a failed oracle check
        print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
